variable "project_id" {
  type        = string
  description = "GCP project that hosts the functions, scheduler jobs, secrets and Cloud SQL."
}

variable "region" {
  type        = string
  description = "Region of the functions and scheduler jobs."
  default     = "us-central1"
}

variable "functions" {
  type = map(object({
    entry_point = string
    schedule    = string
    memory      = optional(string, "512Mi")
    timeout_s   = optional(number, 1800)
  }))
  description = "Cloud Functions to deploy, keyed by folder under functions/ (packaged by scripts/package.py)."
  default = {
    youtube       = { entry_point = "youtube_sync", schedule = "0 6 * * *" }
    token_refresh = { entry_point = "refresh_tokens", schedule = "5 * * * *", memory = "256Mi", timeout_s = 300 }
  }
  validation {
    condition     = alltrue([for f in values(var.functions) : f.timeout_s <= 1800])
    error_message = "timeout_s must be <= 1800: Cloud Scheduler's attempt deadline for HTTP targets is at most 30 minutes."
  }
}

variable "schedule_time_zone" {
  type        = string
  description = "Time zone of the cron schedules."
  default     = "America/Argentina/Buenos_Aires"
}

variable "credentials" {
  type        = set(string)
  description = "Names of the OAuth credentials (one Secret Manager secret each; versions are added by the token refresher, never by Terraform)."
  default     = []
}

variable "environment" {
  type        = map(string)
  description = "Non-secret settings passed to every function (see README 'Configuration')."
  default     = {}
}
