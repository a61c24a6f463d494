"""The scheduled job: an incremental scan, the exports and the report, under a lease (see :mod:`.run`)."""
