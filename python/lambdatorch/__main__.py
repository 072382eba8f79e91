"""``python -m lambdatorch``: the same as the ``lambdatorch`` console script."""

from .cli import main

raise SystemExit(main())
