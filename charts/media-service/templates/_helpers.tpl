{{/* Names. */}}
{{- define "media-service.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "media-service.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "media-service.operatorName" -}}
{{- printf "%s-operator" (include "media-service.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "media-service.metricsName" -}}
{{- printf "%s-metrics" (include "media-service.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "media-service.webhookSecretName" -}}
{{- default (printf "%s-webhook" (include "media-service.operatorName" .)) .Values.operator.webhook.existingSecret -}}
{{- end -}}

{{- define "media-service.authSecretName" -}}
{{- default (printf "%s-auth" (include "media-service.fullname" .)) .Values.auth.existingSecret -}}
{{- end -}}

{{/* Whether the pods verify tokens with the HMAC secret (an existing or a generated Secret). */}}
{{- define "media-service.authSecret" -}}
{{- if and (not .Values.auth.allowAnonymous) (or .Values.auth.existingSecret .Values.auth.generateSecret) -}}true{{- end -}}
{{- end -}}

{{- define "media-service.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "media-service.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "media-service.operatorServiceAccountName" -}}
{{- if .Values.operator.serviceAccount.create -}}
{{- default (include "media-service.operatorName" .) .Values.operator.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.operator.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Labels. As in the prometheus-community charts, selector labels are included *inside* the labels
that carry them, never beside them in one map: the keys would repeat, which helm and kubectl let
through but kustomize, Flux, kubeconform and server-side strict field validation reject. A pod's
labels are its selector labels plus metaLabels; every other object's are `labels`. */}}
{{- define "media-service.labels" -}}
{{ include "media-service.releaseSelectorLabels" . }}
{{ include "media-service.metaLabels" . }}
{{- end -}}

{{/* The labels no selector reads. */}}
{{- define "media-service.metaLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: media-service
{{- end -}}

{{- define "media-service.releaseSelectorLabels" -}}
app.kubernetes.io/name: {{ include "media-service.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Media pods: the operator's contract. The pool label is in every selector, so a pod the
operator relabels `quarantined` leaves the Service, the ReplicaSet and the PDB at once. */}}
{{- define "media-service.selectorLabels" -}}
{{ include "media-service.releaseSelectorLabels" . }}
app.kubernetes.io/component: media
media-service/pool: serving
{{- end -}}

{{- define "media-service.operatorSelectorLabels" -}}
{{ include "media-service.releaseSelectorLabels" . }}
app.kubernetes.io/component: operator
{{- end -}}

{{/* Images: a digest pins the image; the tag defaults to appVersion. */}}
{{- define "media-service.image" -}}
{{- $image := index . 0 -}}{{- $root := index . 1 -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $image.repository $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $image.repository (default $root.Chart.AppVersion $image.tag) -}}
{{- end -}}
{{- end -}}

{{/* ServiceMonitor/PrometheusRule: an explicit true/false wins; null means "when the cluster
has the prometheus-operator CRDs", so a plain install gets them where they can exist. */}}
{{- define "media-service.monitoringEnabled" -}}
{{- $value := index . 0 -}}{{- $root := index . 1 -}}
{{- if kindIs "bool" $value -}}
{{- if $value }}true{{ end -}}
{{- else if $root.Capabilities.APIVersions.Has "monitoring.coreos.com/v1" -}}
true
{{- end -}}
{{- end -}}

{{/* The operator is scraped as the chart models it: installed, with its ServiceMonitor. Its rules
(alerts/media-operator.rules.yaml) ship only then, or MediaOperatorDown would fire for a target
that cannot exist. */}}
{{- define "media-service.operatorMonitored" -}}
{{- if and .Values.operator.enabled (include "media-service.monitoringEnabled" (list .Values.operator.serviceMonitor.enabled .)) -}}
true
{{- end -}}
{{- end -}}

{{/* Namespaces the operator watches and holds Roles in. */}}
{{- define "media-service.operatorNamespaces" -}}
{{- if .Values.operator.watchNamespaces -}}
{{- join "," .Values.operator.watchNamespaces -}}
{{- else if not .Values.operator.rbac.clusterWide -}}
{{- .Release.Namespace -}}
{{- end -}}
{{- end -}}

{{- define "media-service.operatorPodSelector" -}}
{{- if .Values.operator.podSelector -}}
{{- .Values.operator.podSelector -}}
{{- else -}}
{{- printf "app.kubernetes.io/name=%s,app.kubernetes.io/instance=%s,app.kubernetes.io/component=media" (include "media-service.name" .) .Release.Name -}}
{{- end -}}
{{- end -}}

{{- define "media-service.terminationGracePeriodSeconds" -}}
{{- add (ceil .Values.config.drainSeconds | int) .Values.terminationGraceMarginSeconds -}}
{{- end -}}

{{/* A number as the service's parsers read it: YAML numbers reach templates as float64, and
Go prints 16777216.0 as "1.6777216e+07"; whole numbers are printed as integers. */}}
{{- define "media-service.num" -}}
{{- if eq (float64 .) (floor .) -}}
{{- int64 . -}}
{{- else -}}
{{- . -}}
{{- end -}}
{{- end -}}

{{/* Redis, the bus between replicas. */}}
{{- define "media-service.redisName" -}}
{{- printf "%s-redis" (include "media-service.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "media-service.redisSelectorLabels" -}}
{{ include "media-service.releaseSelectorLabels" . }}
app.kubernetes.io/component: redis
{{- end -}}

{{/* More than one media pod may run: replicaCount, or the autoscaler's maximum. */}}
{{- define "media-service.replicated" -}}
{{- if .Values.autoscaling.enabled -}}
{{- if gt (int .Values.autoscaling.maxReplicas) 1 }}true{{ end -}}
{{- else if gt (int .Values.replicaCount) 1 -}}
true
{{- end -}}
{{- end -}}

{{- define "media-service.redisExternal" -}}
{{- if or .Values.redis.url .Values.redis.existingSecret }}true{{ end -}}
{{- end -}}

{{/* The bundled Redis: an explicit true/false wins; null means "when more than one media pod may
run and no external Redis is set", so a plain install of two replicas works and a one-replica
install runs no Redis at all. */}}
{{- define "media-service.redisBundled" -}}
{{- $enabled := .Values.redis.bundled.enabled -}}
{{- if kindIs "bool" $enabled -}}
{{- if $enabled }}true{{ end -}}
{{- else if and (include "media-service.replicated" .) (not (include "media-service.redisExternal" .)) -}}
true
{{- end -}}
{{- end -}}

{{- define "media-service.redisEnabled" -}}
{{- if or (include "media-service.redisExternal" .) (include "media-service.redisBundled" .) }}true{{ end -}}
{{- end -}}

{{/* The Secret whose key holds the Redis password: the user's, or the one generated for the
bundled Redis. Empty when the media pods get no password file. */}}
{{- define "media-service.redisPasswordSecret" -}}
{{- if .Values.redis.password.existingSecret -}}
{{- .Values.redis.password.existingSecret -}}
{{- else if include "media-service.redisBundled" . -}}
{{- include "media-service.redisName" . -}}
{{- end -}}
{{- end -}}

{{- define "media-service.redisPasswordDir" -}}
/var/run/secrets/media-service/redis
{{- end -}}

{{/* One message per mistake, before anything renders. */}}
{{- define "media-service.validateRedis" -}}
{{- if and .Values.redis.url .Values.redis.existingSecret -}}
{{- fail "set either redis.url or redis.existingSecret, not both" -}}
{{- end -}}
{{- if and (include "media-service.redisExternal" .) (kindIs "bool" .Values.redis.bundled.enabled) .Values.redis.bundled.enabled -}}
{{- fail "set either an external Redis (redis.url or redis.existingSecret) or redis.bundled.enabled=true, not both" -}}
{{- end -}}
{{- if and (include "media-service.replicated" .) (not (include "media-service.redisEnabled" .)) -}}
{{- $key := ternary "autoscaling.maxReplicas" "replicaCount" .Values.autoscaling.enabled -}}
{{- $count := ternary .Values.autoscaling.maxReplicas .Values.replicaCount .Values.autoscaling.enabled | int -}}
{{- fail (printf "%s=%d needs Redis between the media pods (each reaches users and WHIP sessions on the others through it), and none is set: set redis.url or redis.existingSecret (an external Redis), redis.bundled.enabled=true (one Redis in the release), or %s=1. See \"Replicas and Redis\" in the chart README." $key $count $key) -}}
{{- end -}}
{{- end -}}

{{/*
"true" when the media pods run on the node's network: `hostNetwork`, or the one ICE port in
`hostNetwork` mode; empty otherwise.
*/}}
{{- define "media-service.hostNetwork" -}}
{{- if or .Values.hostNetwork (and .Values.iceMux.enabled (eq .Values.iceMux.mode "hostNetwork")) }}true{{ end }}
{{- end }}
