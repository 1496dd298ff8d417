output "function_uris" {
  description = "HTTPS endpoint of each function (invocable by the scheduler service account only)."
  value       = { for k, f in google_cloudfunctions2_function.function : k => f.service_config[0].uri }
}

output "scheduler_service_account" {
  description = "Service account whose OIDC tokens may invoke the functions (use it for manual runs too)."
  value       = google_service_account.scheduler.email
}
