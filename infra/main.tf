# Functions: one 2nd-gen HTTP function per folder, invoked only by the scheduler service account.

resource "google_service_account" "runtime" {
  account_id   = "sde-functions"
  display_name = "Social Data Engine functions runtime"
}

resource "google_service_account" "scheduler" {
  account_id   = "sde-scheduler"
  display_name = "Social Data Engine scheduler (invoker only)"
}

resource "google_storage_bucket" "source" {
  name                        = "${var.project_id}-sde-source"
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
}

data "archive_file" "function" {
  for_each    = var.functions
  type        = "zip"
  source_dir  = "${path.module}/.build/${each.key}"
  output_path = "${path.module}/.build/${each.key}.zip"
}

resource "google_storage_bucket_object" "function" {
  for_each = var.functions
  # the hash in the name makes a code change redeploy the function
  name   = "${each.key}/${data.archive_file.function[each.key].output_md5}.zip"
  bucket = google_storage_bucket.source.name
  source = data.archive_file.function[each.key].output_path
}

resource "google_cloudfunctions2_function" "function" {
  for_each = var.functions
  name     = "sde-${replace(each.key, "_", "-")}"
  location = var.region

  build_config {
    runtime     = "python311"
    entry_point = each.value.entry_point
    source {
      storage_source {
        bucket = google_storage_bucket.source.name
        object = google_storage_bucket_object.function[each.key].name
      }
    }
  }

  service_config {
    available_memory                 = each.value.memory
    timeout_seconds                  = each.value.timeout_s
    max_instance_count               = 3
    max_instance_request_concurrency = 1
    ingress_settings                 = "ALLOW_INTERNAL_ONLY"
    all_traffic_on_latest_revision   = true
    service_account_email            = google_service_account.runtime.email
    environment_variables = merge(var.environment, {
      VAULT_BACKEND = "secretmanager"
      GCP_PROJECT   = var.project_id
      DATA_DIR      = "/tmp/sde" # the only writable path: token recovery files
    })
  }
}

resource "google_cloud_run_service_iam_member" "scheduler_invoker" {
  for_each = var.functions
  project  = google_cloudfunctions2_function.function[each.key].project
  location = google_cloudfunctions2_function.function[each.key].location
  service  = google_cloudfunctions2_function.function[each.key].name
  role     = "roles/run.invoker"
  member   = "serviceAccount:${google_service_account.scheduler.email}"
}
