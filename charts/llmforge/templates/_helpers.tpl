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
What the operator does in a namespace it watches, and nothing more (tests/k8s/test_chart_rbac.py compares
this with the kube-apiserver audit log of a real reconcile):
- kopf watches the three kinds and patches them (finalizers; annotations on Evaluations and
  ModelDeployments, and on a FineTuneJob only while an MLflow run needs marking KILLED on deletion) and
  their status subresource;
  the FineTuneJob controller re-reads FineTuneJobs, the ModelDeployment controller reads the FineTuneJobs
  and Evaluations it serves and gates on;
- Events: posted for handler outcomes; listed (field-selected) to surface a Job's FailedCreate reason;
- Pods are listed and watched (label-filtered), never read one by one; their metrics are read over HTTP;
- children are written with server-side apply (PATCH, plus create for the first apply): Jobs are suspended by
  a merge patch and never deleted (ownerReferences GC), serving children are pruned (deleted) when a canary
  or the autoscaler goes away;
- Secrets are only referenced by name in pod specs, never read.
*/}}
{{- define "llmforge.workRules" -}}
- apiGroups: [llmforge.dev]
  resources: [finetunejobs, evaluations]
  verbs: [get, list, watch, patch]
- apiGroups: [llmforge.dev]
  resources: [modeldeployments]
  verbs: [list, watch, patch]
- apiGroups: [llmforge.dev]
  resources: [finetunejobs/status, evaluations/status, modeldeployments/status]
  verbs: [patch]
- apiGroups: [""]
  resources: [events]
  verbs: [create, list]
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch]
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create, patch]
- apiGroups: [""]
  resources: [configmaps, services]
  verbs: [get, create, patch, delete]
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, create, patch, delete]
- apiGroups: [autoscaling]
  resources: [horizontalpodautoscalers]
  verbs: [get, create, patch, delete]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [get, create, patch, delete]
- apiGroups: [gateway.networking.k8s.io]
  resources: [httproutes]
  verbs: [get, create, patch, delete]
- apiGroups: [monitoring.googleapis.com]
  resources: [podmonitorings]
  verbs: [get, create, patch, delete]
- apiGroups: [monitoring.coreos.com]
  resources: [servicemonitors]
  verbs: [get, create, patch, delete]
- apiGroups: [networking.gke.io]
  resources: [healthcheckpolicies]
  verbs: [get, create, patch, delete]
{{- end }}
