"""`python -m bnfold.cli ARGS` runs the `bnfold` command."""

from bnfold.cli.dispatch import main

raise SystemExit(main())
