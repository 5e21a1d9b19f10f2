"""INT8 students trained with their teacher: the quantization-aware stage (QAT, QAD) after a method's plan,
and the paths `export.int8.mode` takes to the shipped INT8 artifacts. NNCF and torch are imported by the
modules that need them, not here."""
