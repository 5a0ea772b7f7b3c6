{{/* Names and labels shared by every template. */}}

{{- define "flowmill.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "flowmill.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 54 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 54 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "flowmill.operatorName" -}}
{{- printf "%s-operator" (include "flowmill.fullname" .) -}}
{{- end -}}

{{- define "flowmill.labels" -}}
app.kubernetes.io/name: {{ include "flowmill.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "flowmill.selectorLabels" -}}
app.kubernetes.io/name: {{ include "flowmill.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "flowmill.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "flowmill.operatorName" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "flowmill.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* Peering is on when asked, or by default with more than one replica. */}}
{{- define "flowmill.peering" -}}
{{- $p := .Values.peering.enabled -}}
{{- if or (eq (toString $p) "true") (and (eq (toString $p) "auto") (gt (int .Values.operator.replicas) 1)) -}}
true
{{- end -}}
{{- end -}}

{{/* Where the operator writes: the watched namespaces plus the topic namespaces. */}}
{{- define "flowmill.clusterwide" -}}
{{- if not .Values.watchNamespaces -}}true{{- end -}}
{{- end -}}

{{/* Peering name: unique per release, so two installations never pause each other. */}}
{{- define "flowmill.peeringName" -}}
{{- default (printf "%s-%s" (include "flowmill.fullname" .) .Release.Namespace) .Values.peering.name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
