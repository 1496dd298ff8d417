# One secret per OAuth credential. Terraform creates the container only: versions (the tokens) are
# added by `shared.cli tokens import` and the token refresher, so no token ever lands in state.

resource "google_secret_manager_secret" "credential" {
  for_each  = var.credentials
  secret_id = each.value
  labels    = { "sde-credential" = "true" } # the refresher only reads secrets with this label
  replication {
    auto {}
  }
}

resource "google_secret_manager_secret_iam_member" "runtime_manage" {
  for_each  = var.credentials
  secret_id = google_secret_manager_secret.credential[each.key].id
  # read latest, add versions, disable/destroy superseded versions (each version is billed)
  role   = "roles/secretmanager.secretVersionManager"
  member = "serviceAccount:${google_service_account.runtime.email}"
}

resource "google_secret_manager_secret_iam_member" "runtime_access" {
  for_each  = var.credentials
  secret_id = google_secret_manager_secret.credential[each.key].id
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.runtime.email}"
}

# Listing credentials: `refresh_tokens` refreshes every credential the account registry references (read
# per secret with the grants above) and, as a supplement, every secret labelled sde-credential=true
# (`secrets.list` with filter labels.sde-credential=true), so a credential imported before its accounts
# are registered is still kept alive. `secretmanager.secrets.list` exists only at project level;
# roles/secretmanager.viewer grants it plus secrets.get / versions.get / versions.list: metadata only,
# never `versions.access` (no payload of any other secret in the project). Without this binding the
# refresher logs a warning and refreshes the referenced credentials only.
resource "google_project_iam_member" "runtime_list_secrets" {
  project = var.project_id
  role    = "roles/secretmanager.viewer"
  member  = "serviceAccount:${google_service_account.runtime.email}"
}
