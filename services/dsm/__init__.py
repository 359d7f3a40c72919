"""Reference data management system (DSM): datasets (open/closed) and their files, for standalone deployments and
tests. A site can point the WMS at its own DSM with the same REST API (``WMS_DSM_URL``)."""
