"""The operator's tools: the ``hearsay`` CLI, the admin client, ``top``, ``cluster``, the process launcher and certificate issuance."""
