{{/* Names and labels shared by every template. */}}

{{- define "llmforge.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "llmforge.fullname" -}}
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

{{- define "llmforge.operatorName" -}}
{{- printf "%s-operator" (include "llmforge.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "llmforge.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "llmforge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: llmforge
{{- end }}

{{- define "llmforge.operatorSelector" -}}
app.kubernetes.io/name: {{ include "llmforge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "llmforge.operatorLabels" -}}
{{ include "llmforge.labels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "llmforge.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "llmforge.operatorName" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The kopf peering object's name; peering is on when more than one replica runs. */}}
{{- define "llmforge.peering" -}}
{{- if gt (int .Values.operator.replicas) 1 }}{{ include "llmforge.fullname" . }}{{ end }}
{{- end }}

{{/*
What the operator does in a namespace it watches: reconcile the three kinds (kopf patches the object for its
finalizer and the status subresource), post Events, create-or-patch children with server-side apply (a
PATCH, plus create for the first apply), read Pods. Secrets are only referenced by name, never read.
*/}}
{{- define "llmforge.workRules" -}}
- apiGroups: [llmforge.dev]
  resources: [finetunejobs, evaluations, modeldeployments]
  verbs: [get, list, watch, patch]
- apiGroups: [llmforge.dev]
  resources: [finetunejobs/status, evaluations/status, modeldeployments/status]
  verbs: [get, patch]
- apiGroups: [""]
  resources: [events]
  verbs: [create]
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch]
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create, patch]
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, list, watch, create, patch]
- apiGroups: [""]
  resources: [services]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [autoscaling]
  resources: [horizontalpodautoscalers]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [gateway.networking.k8s.io]
  resources: [httproutes]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [monitoring.googleapis.com]
  resources: [podmonitorings]
  verbs: [get, list, watch, create, patch, delete]
{{- end }}
