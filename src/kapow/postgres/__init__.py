"""PostgreSQL side: connection pools, the table catalog and the batch writer."""
