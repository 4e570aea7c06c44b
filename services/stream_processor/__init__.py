"""Stream-processor Faust worker: the ``recorder`` agent (call audio → S3 archive + Postgres)."""
