{{/* Labels on every object's metadata (kustomize's `labels` adds the first). */}}
{{- define "connectors.labels" -}}
app.kubernetes.io/part-of: connectors
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* The product's image. */}}
{{- define "connectors.image" -}}
image: {{ printf "%s:%s" .Values.image.repository .Values.image.tag }}
{{- with .Values.image.pullPolicy }}
imagePullPolicy: {{ . }}
{{- end }}
{{- end -}}

{{/* The proxy Service's DNS name, as pods reach it. */}}
{{- define "connectors.proxyHost" -}}
{{ printf "connectors-proxy.%s.svc" .Values.namespace }}
{{- end -}}

{{/* host[:port] of the proxy's HTTPS as pods reach it. */}}
{{- define "connectors.proxyAddress" -}}
{{ .Values.proxy.address | default (include "connectors.proxyHost" .) }}
{{- end -}}

{{/*
Pod template metadata: the component's labels, then the common and the
component's own extra labels and annotations. Called with
(dict "root" $ "component" "proxy" "values" .Values.proxy).
*/}}
{{- define "connectors.podMetadata" -}}
{{- $annotations := merge (dict) (.values.podAnnotations | default dict) .root.Values.podAnnotations -}}
{{- with $annotations }}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end }}
labels:
  app.kubernetes.io/name: connectors
  app.kubernetes.io/component: {{ .component }}
  {{- with merge (dict) (.values.podLabels | default dict) .root.Values.podLabels }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end -}}

{{/*
Scheduling of a component's pods: priority class, node selector,
tolerations, affinity, image pull secrets.
*/}}
{{- define "connectors.scheduling" -}}
{{- with .values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Fails the render on settings that cannot work together. */}}
{{- define "connectors.validate" -}}
{{- if not (has .Values.nodePull.podCredentials (list "forward" "require" "ignore")) }}
{{- fail "nodePull.podCredentials must be forward, require or ignore" }}
{{- end }}
{{- if not (has .Values.proxy.forwardTunnels (list "allowed" "listed" "off")) }}
{{- fail "proxy.forwardTunnels must be allowed, listed or off" }}
{{- end }}
{{- if not (has .Values.webhook.failurePolicy (list "Fail" "Ignore")) }}
{{- fail "webhook.failurePolicy must be Fail or Ignore" }}
{{- end }}
{{- if and .Values.nodePull.enabled (not (regexMatch "^(127\\.[0-9.]+|localhost|\\[::1\\]):[0-9]+$" .Values.pullAddress)) }}
{{- fail (printf "pullAddress %s: with nodePull.enabled images are pulled from the node pull endpoint, which listens on the loopback only (e.g. 127.0.0.1:7480); set nodePull.enabled=false to pull from the proxy's pinned ClusterIP" .Values.pullAddress) }}
{{- end }}
{{- if eq .Values.namespace .Values.csiNamespace }}
{{- fail "namespace and csiNamespace must differ: only the node-level DaemonSets run privileged" }}
{{- end }}
{{- end -}}

{{/* The host of pullAddress (where the node pull endpoint listens). */}}
{{- define "connectors.pullHost" -}}
{{ regexReplaceAll ":[0-9]+$" .Values.pullAddress "" | trimPrefix "[" | trimSuffix "]" }}
{{- end -}}
