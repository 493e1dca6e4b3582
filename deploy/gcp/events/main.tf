# Firewall changes as events for server-hardening: a log sink routes the Admin Activity audit
# logs of firewall and firewall-policy calls to a Pub/Sub topic; the operator pulls its
# subscription (spec.gcp.events.subscription = the `subscription` output).
#
#   terraform init && terraform apply -var project=my-project \
#     -var operator_member=serviceAccount:server-hardening@my-project.iam.gserviceaccount.com
#
# Admin Activity audit logs are always on and free; nothing needs enabling.

terraform {
  required_providers {
    google = {
      source  = "hashicorp/google"
      version = ">= 5.0"
    }
  }
}

variable "project" {
  type        = string
  description = "The project whose firewalls the operator manages (spec.gcp.project)."
}

variable "name" {
  type        = string
  default     = "server-hardening-events"
  description = "The name of the sink, the topic and the subscription."
}

variable "operator_member" {
  type        = string
  description = "The operator's identity, e.g. serviceAccount:NAME@PROJECT.iam.gserviceaccount.com (with GKE Workload Identity, the Google service account the operator's Kubernetes service account impersonates)."
}

resource "google_pubsub_topic" "events" {
  project = var.project
  name    = var.name
  # Events are hints: one older than the operator's timer (10 minutes by default with events)
  # is worth little, so a day covers an operator that was down.
  message_retention_duration = "86400s"
}

resource "google_pubsub_subscription" "events" {
  project = var.project
  name    = var.name
  topic   = google_pubsub_topic.events.id
  # A batch is handled in well under a minute; one not acknowledged comes back after this.
  ack_deadline_seconds       = 60
  message_retention_duration = "86400s"
  expiration_policy {
    ttl = "" # never expires while the operator is idle
  }
}

resource "google_logging_project_sink" "events" {
  project     = var.project
  name        = var.name
  destination = "pubsub.googleapis.com/${google_pubsub_topic.events.id}"
  # Admin Activity entries of VPC firewall rules and of network firewall policies (the
  # methods are v1./beta./alpha.compute.firewalls.insert|patch|update|delete and
  # compute.networkFirewallPolicies.*: `:` matches a substring).
  filter = join(" AND ", [
    "logName=\"projects/${var.project}/logs/cloudaudit.googleapis.com%2Factivity\"",
    "protoPayload.serviceName=\"compute.googleapis.com\"",
    "(protoPayload.methodName:\"compute.firewalls.\" OR protoPayload.methodName:\"compute.networkFirewallPolicies.\" OR protoPayload.methodName:\"compute.regionNetworkFirewallPolicies.\")",
  ])
  unique_writer_identity = true
}

# The sink's own identity may publish to this topic, and nothing else.
resource "google_pubsub_topic_iam_member" "sink_publishes" {
  project = var.project
  topic   = google_pubsub_topic.events.name
  role    = "roles/pubsub.publisher"
  member  = google_logging_project_sink.events.writer_identity
}

# The operator may pull and acknowledge this subscription (pubsub.subscriptions.consume), and
# nothing else: no topic, no other subscription.
resource "google_pubsub_subscription_iam_member" "operator_pulls" {
  project      = var.project
  subscription = google_pubsub_subscription.events.name
  role         = "roles/pubsub.subscriber"
  member       = var.operator_member
}

output "subscription" {
  description = "spec.gcp.events.subscription"
  value       = google_pubsub_subscription.events.id
}
