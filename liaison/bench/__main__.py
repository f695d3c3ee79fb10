"""``python -m liaison.bench``: the federated query benchmark."""

from liaison.bench.federated import main

raise SystemExit(main())
