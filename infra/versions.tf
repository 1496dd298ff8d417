terraform {
  required_version = ">= 1.5"
  backend "gcs" {} # bucket passed at init: -backend-config=bucket=...
  required_providers {
    google  = { source = "hashicorp/google", version = ">= 5.0, < 8" }
    archive = { source = "hashicorp/archive", version = ">= 2.4" }
  }
}

provider "google" {
  project = var.project_id
  region  = var.region
}
