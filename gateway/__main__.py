"""`python -m gateway` is the same as the `charger-gateway` command."""

from gateway.cli import main

raise SystemExit(main())
