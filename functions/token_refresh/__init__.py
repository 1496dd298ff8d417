"""Token refresh Cloud Function: keeps every credential in the vault ahead of its expiry (hourly)."""
