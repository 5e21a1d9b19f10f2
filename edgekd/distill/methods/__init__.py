"""Every distillation method's code, one module per method.

catalog.py declares the methods and names each one's module here; a module is imported when its method is
first trained or its plan listed, not by importing this package.
"""
