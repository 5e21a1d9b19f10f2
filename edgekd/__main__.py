"""`python -m edgekd` = the `edgekd` command (torchrun launches `-m edgekd build ...`)."""

from edgekd.cli import main

if __name__ == "__main__":
    main()
