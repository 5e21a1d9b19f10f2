"""The recipe's schema, one module per section, and how a recipe file is read.

units (counts, durations, paths) <- data <- train <- models (teacher/student); deploy (export/benchmark),
report, distill (built from the method catalog); errors (the describer); loading (YAML, overrides,
validation). `edgekd.recipe.Recipe` composes the sections and checks what spans them. Nothing here imports
torch: a recipe is checked before anything heavy loads.
"""
