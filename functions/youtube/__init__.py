"""YouTube Cloud Function: channel + video metrics from the Data API v3 and the Analytics API v2."""
