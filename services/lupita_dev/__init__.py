"""Development tooling, not shipped in the service images: the local stack (``lupita stack``:
Kafka, Postgres, MinIO and Weaviate as local processes) and the end-to-end demo (``lupita demo``).
The images are built without this package (``.dockerignore``); there ``lupita stack`` and
``lupita demo`` say so."""
