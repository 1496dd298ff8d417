resource "google_cloud_scheduler_job" "function" {
  for_each         = var.functions
  name             = "sde-${replace(each.key, "_", "-")}"
  region           = var.region
  schedule         = each.value.schedule
  time_zone        = var.schedule_time_zone
  attempt_deadline = "${each.value.timeout_s}s"

  retry_config {
    retry_count          = 2
    min_backoff_duration = "60s"
    max_backoff_duration = "600s"
    max_doublings        = 2
  }

  http_target {
    http_method = "POST"
    uri         = google_cloudfunctions2_function.function[each.key].service_config[0].uri
    body        = base64encode(jsonencode({}))
    headers     = { "Content-Type" = "application/json" }
    oidc_token {
      service_account_email = google_service_account.scheduler.email
      audience              = google_cloudfunctions2_function.function[each.key].service_config[0].uri
    }
  }
}
