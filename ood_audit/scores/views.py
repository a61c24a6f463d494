"""The names of the six CSD views (SPEC §7), in the order of ``csd_views``' second axis and of the report's
``csd_view`` codes. Kept free of torch so that readers of reports can name a view without loading it."""

CSD_VIEW_NAMES: tuple[str, ...] = ("q00", "q01", "q10", "q11", "global", "centre")
