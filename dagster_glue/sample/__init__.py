"""The bundled sample pipeline: a consumer of ``dagster_glue``'s public API like any
user's project (``change_detection``, ``ManifestResource``), configured by ``RAW_*``
environment variables. ``dagster dev`` finds ``dagster_glue.sample.definitions`` through
``[tool.dagster]``; ``python -m dagster_glue.sample.demo`` tells the whole story."""
