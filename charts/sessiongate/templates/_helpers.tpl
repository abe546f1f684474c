{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "sessiongate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name: the release name, unless it already contains the chart name. */}}
{{- define "sessiongate.fullname" -}}
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

{{- define "sessiongate.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels: stable for the life of a release (Deployment selectors are immutable). */}}
{{- define "sessiongate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sessiongate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Common labels on every object. */}}
{{- define "sessiongate.labels" -}}
helm.sh/chart: {{ include "sessiongate.chart" . }}
{{ include "sessiongate.selectorLabels" . }}
app.kubernetes.io/component: ext-authz
app.kubernetes.io/part-of: sessiongate
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "sessiongate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "sessiongate.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "sessiongate.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Secret names: the existing Secret, else <fullname>-<suffix> (created by the chart when
     the value is given, otherwise expected to exist). */}}
{{- define "sessiongate.jwksSecretName" -}}
{{- default (printf "%s-jwks" (include "sessiongate.fullname" .)) .Values.jwks.existingSecret }}
{{- end }}
{{- define "sessiongate.adminSecretName" -}}
{{- default (printf "%s-admin" (include "sessiongate.fullname" .)) .Values.admin.existingSecret }}
{{- end }}
{{- define "sessiongate.redisSecretName" -}}
{{- default (printf "%s-redis" (include "sessiongate.fullname" .)) .Values.redis.existingSecret }}
{{- end }}

{{/* Mount points (the config file points at them). */}}
{{- define "sessiongate.jwksDir" -}}/etc/sessiongate/keys{{- end }}
{{- define "sessiongate.adminDir" -}}/etc/sessiongate/admin{{- end }}

{{/* The config file: values.config plus the keys the chart owns. */}}
{{- define "sessiongate.config" -}}
{{- $cfg := deepCopy .Values.config }}
{{- $owned := dict
      "grpc" (dict "listen" (printf "0.0.0.0:%d" (int .Values.ports.grpc)))
      "http" (dict "listen" (printf "0.0.0.0:%d" (int .Values.ports.http)))
      "jwt" (dict "jwks_file" (printf "%s/%s" (include "sessiongate.jwksDir" .) .Values.jwks.key)) }}
{{- if .Values.admin.enabled }}
{{- $_ := set $owned "admin" (dict "token_file" (printf "%s/%s" (include "sessiongate.adminDir" .) .Values.admin.key)) }}
{{- end }}
{{- toYaml (mergeOverwrite $cfg $owned) }}
{{- end }}
