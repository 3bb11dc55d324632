{{/*
Labels on every object. `app.kubernetes.io/name` is set per component (ambit-controller,
ambit-node): kubectl-ambit finds the parts by it.
*/}}
{{- define "ambit.labels" -}}
app.kubernetes.io/part-of: ambit
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Values.image.tag | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{/* Image of one binary: ambit.image (dict "root" $ "binary" "ambit-tunnel"). */}}
{{- define "ambit.image" -}}
{{ printf "%s/%s:%s" (trimSuffix "/" .root.Values.image.registry) .binary .root.Values.image.tag }}
{{- end }}

{{/* SPIFFE id of a service account of the release namespace. */}}
{{- define "ambit.spiffe" -}}
{{ printf "spiffe://%s/ns/%s/sa/%s" .root.Values.trustDomain .root.Release.Namespace .sa }}
{{- end }}

{{/* Container hardening shared by every container; each adds its user and capabilities. */}}
{{- define "ambit.containerHardening" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
seccompProfile:
  type: RuntimeDefault
{{- end }}
