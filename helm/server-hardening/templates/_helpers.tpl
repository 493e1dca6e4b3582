{{/*
Chart name, truncated to the 63 characters a label value may hold.
*/}}
{{- define "server-hardening.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: release name + chart name, unless the release name already contains the chart name.
*/}}
{{- define "server-hardening.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "server-hardening.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels.
*/}}
{{- define "server-hardening.labels" -}}
helm.sh/chart: {{ include "server-hardening.chart" . }}
{{ include "server-hardening.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: server-hardening
{{- end }}

{{/*
Selector labels (immutable on a Deployment: keep them few and stable).
*/}}
{{- define "server-hardening.selectorLabels" -}}
app.kubernetes.io/name: {{ include "server-hardening.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "server-hardening.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "server-hardening.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "server-hardening.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
True ("true") when the operator watches every namespace.
*/}}
{{- define "server-hardening.clusterWide" -}}
{{- if not .Values.watchNamespaces }}true{{ end }}
{{- end }}

{{/*
The namespace of the ServerHardening resource created from values.
*/}}
{{- define "server-hardening.resourceNamespace" -}}
{{- default .Release.Namespace .Values.serverHardening.namespace }}
{{- end }}

{{/*
Rules the operator needs on the resources it reconciles (a Role per watched namespace, or the
ClusterRole when cluster-wide). Never Secrets, never wildcards.
*/}}
{{- define "server-hardening.operatorRules" -}}
# The ServerHardening resources: watch, and kopf's progress annotations/finalizers.
- apiGroups: ["hardening.circleci.com"]
  resources: ["serverhardenings"]
  verbs: ["get", "list", "watch", "patch", "update"]
- apiGroups: ["hardening.circleci.com"]
  resources: ["serverhardenings/status"]
  verbs: ["get", "patch", "update"]
# What the operator writes in the server's namespace.
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
# Resolving spec.kubernetes.components[].service to pod selectors and ports.
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "list", "watch"]
# Verifying the guide on the namespace's pods (their labels and declared ports) under every
# NetworkPolicy in it, at each full check. Read-only.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list"]
# The OpenReports Report of each ServerHardening (create-or-replace; harmless without the CRD).
- apiGroups: ["openreports.io"]
  resources: ["reports"]
  verbs: ["get", "create", "update"]
# Events on the ServerHardening resources (kopf posts core/v1 events; events.k8s.io for both).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

{{/*
Fail early on value combinations that cannot work.
*/}}
{{- define "server-hardening.validate" -}}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.ha.enabled) }}
{{- fail "replicaCount > 1 needs ha.enabled=true: standalone operators would fight over the same resources" }}
{{- end }}
{{- with .Values.ha }}
{{- if not (lt (int .renewDeadlineSeconds) (int .leaseDurationSeconds)) }}
{{- fail "ha.renewDeadlineSeconds must be below ha.leaseDurationSeconds: a leader that cannot renew must stop before a standby may take over" }}
{{- end }}
{{- if not (lt (mulf (float64 .retryPeriodSeconds) 1.2) (float64 .renewDeadlineSeconds)) }}
{{- fail "ha.renewDeadlineSeconds must be above 1.2 x ha.retryPeriodSeconds (client-go's rule)" }}
{{- end }}
{{- end }}
{{- if not (has .Values.operator.logFormat (list "text" "json")) }}
{{- fail "operator.logFormat must be text or json" }}
{{- end }}
{{- if and .Values.serverHardening.enabled .Values.watchNamespaces }}
{{- if not (has (include "server-hardening.resourceNamespace" .) .Values.watchNamespaces) }}
{{- fail (printf "serverHardening.namespace %q is not in watchNamespaces: the operator would never see it" (include "server-hardening.resourceNamespace" .)) }}
{{- end }}
{{- end }}
{{- if and .Values.serverHardening.enabled (not .Values.serverHardening.spec) }}
{{- fail "serverHardening.enabled needs serverHardening.spec (at least serverVersion and topology)" }}
{{- end }}
{{- with .Values.cloudCredentials }}
{{- if and (or .gcpKeyFileKey .awsAccessKeyIdKey .awsSecretAccessKeyKey .awsSessionTokenKey) (not .existingSecret) }}
{{- fail "cloudCredentials.*Key values need cloudCredentials.existingSecret" }}
{{- end }}
{{- if and .existingSecret (not (or .gcpKeyFileKey .awsAccessKeyIdKey)) }}
{{- fail "cloudCredentials.existingSecret needs gcpKeyFileKey or awsAccessKeyIdKey + awsSecretAccessKeyKey" }}
{{- end }}
{{- if and (or .awsAccessKeyIdKey .awsSecretAccessKeyKey) (not (and .awsAccessKeyIdKey .awsSecretAccessKeyKey)) }}
{{- fail "cloudCredentials.awsAccessKeyIdKey and awsSecretAccessKeyKey go together" }}
{{- end }}
{{- end }}
{{- end }}

{{/* The leader election's Lease (ha.enabled). */}}
{{- define "server-hardening.leaseName" -}}
{{- .Values.ha.leaseName | default (include "server-hardening.fullname" .) }}
{{- end }}

{{/*
An alert's extra labels: alerts.labels, then the alert's own labels over them (team routing).
Called as (dict "alert" $a.driftPersists "common" $a.labels); renders nothing when both are empty.
*/}}
{{- define "server-hardening.alertLabels" -}}
{{- $labels := merge (dict) (.alert.labels | default dict) (.common | default dict) }}
{{- with $labels }}{{ toYaml . }}{{ end }}
{{- end }}
