{{/* Chart name, truncated to 63 characters (DNS label). */}}
{{- define "floyd.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: release-chart unless the release name already contains the chart name. */}}
{{- define "floyd.fullname" -}}
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

{{- define "floyd.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "floyd.labels" -}}
helm.sh/chart: {{ include "floyd.chart" . }}
{{ include "floyd.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: controller
{{- end }}

{{- define "floyd.selectorLabels" -}}
app.kubernetes.io/name: {{ include "floyd.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "floyd.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "floyd.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The namespace Floyd deploys services into. */}}
{{- define "floyd.targetNamespace" -}}
{{- default .Release.Namespace .Values.target.namespace }}
{{- end }}

{{- define "floyd.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The Secret holding the API token: the given one, or the generated one. */}}
{{- define "floyd.apiTokenSecret" -}}
{{- default (printf "%s-api-token" (include "floyd.fullname" .)) .Values.api.existingSecret }}
{{- end }}

{{/* Install identity: floyd.dev/instance on every object Floyd creates. */}}
{{- define "floyd.instance" -}}
{{- default .Release.Name .Values.instance }}
{{- end }}
