"""Campaign sending, the parts that are not plain queries: the recipient snapshot, the
per-recipient message (tracking, unsubscribe) and the feed's settings. Queries live in
`repositories.campaigns` and `repositories.campaign_sends`."""
