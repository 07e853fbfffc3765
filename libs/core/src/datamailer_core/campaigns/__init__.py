"""Campaign sending, the parts that are not plain queries: the recipient snapshot and its
settings. Queries on campaigns and recipients live in `repositories.campaigns`."""
