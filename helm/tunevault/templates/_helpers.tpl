{{/*
Small named helpers, bitnami style: names, labels, image, secrets, paths, validation.
*/}}

{{/* The chart name, shortened to a DNS label. */}}
{{- define "tunevault.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The fully qualified app name; a release named like the chart is not repeated. */}}
{{- define "tunevault.fullname" -}}
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

{{/* The namespace every object goes to. */}}
{{- define "tunevault.namespace" -}}
{{- default .Release.Namespace .Values.namespaceOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Chart name and version, as used by the helm.sh/chart label. */}}
{{- define "tunevault.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels on every object. */}}
{{- define "tunevault.labels" -}}
helm.sh/chart: {{ include "tunevault.chart" . }}
app.kubernetes.io/name: {{ include "tunevault.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tunevault
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Labels that select the server pod: Deployment selector, Services, NetworkPolicy. */}}
{{- define "tunevault.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tunevault.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: server
{{- end -}}

{{/* The label a pod in the release namespace carries to be let through the NetworkPolicy. */}}
{{- define "tunevault.clientLabel" -}}
{{ include "tunevault.fullname" . }}-client: "true"
{{- end -}}

{{/* commonAnnotations merged with an object's own annotations (given as .extra). */}}
{{- define "tunevault.annotations" -}}
{{- $all := merge (dict) (.extra | default (dict)) (.context.Values.commonAnnotations | default (dict)) -}}
{{- if $all -}}
{{ toYaml $all }}
{{- end -}}
{{- end -}}

{{/* The server image: registry/repository:tag@digest; the tag defaults to appVersion. */}}
{{- define "tunevault.image" -}}
{{- $registry := default .Values.image.registry .Values.global.imageRegistry -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag | toString -}}
{{- $name := .Values.image.repository -}}
{{- if $registry }}{{ $name = printf "%s/%s" $registry $name }}{{ end -}}
{{- if .Values.image.digest -}}
{{- printf "%s:%s@%s" $name $tag .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" $name $tag -}}
{{- end -}}
{{- end -}}

{{/* imagePullSecrets from global and image values, without duplicates. */}}
{{- define "tunevault.imagePullSecrets" -}}
{{- $secrets := list -}}
{{- range (concat .Values.global.imagePullSecrets .Values.image.pullSecrets) -}}
{{- $name := . -}}
{{- if kindIs "map" . }}{{ $name = .name }}{{ end -}}
{{- $secrets = append $secrets $name -}}
{{- end -}}
{{- range ($secrets | uniq) }}
- name: {{ . }}
{{- end }}
{{- end -}}

{{/* The ServiceAccount the pod runs as. */}}
{{- define "tunevault.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "tunevault.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The PVC holding the SQLite database and artifacts. */}}
{{- define "tunevault.dataClaimName" -}}
{{- default (printf "%s-data" (include "tunevault.fullname" .)) .Values.persistence.existingClaim -}}
{{- end -}}

{{/* The model store directory: its own claim at /models, else DATA_DIR/models on the data volume. */}}
{{- define "tunevault.modelsDir" -}}
{{- if .Values.modelStore.existingClaim -}}/models{{- else -}}/data/models{{- end -}}
{{- end -}}

{{/* Whether the chart creates the Secret for the admin token and the master key. */}}
{{- define "tunevault.createSecret" -}}
{{- if or (and .Values.auth.enabled (not .Values.auth.existingSecret)) (and .Values.encryption.enabled (not .Values.encryption.existingSecret)) -}}
true
{{- end -}}
{{- end -}}

{{- define "tunevault.adminTokenSecretName" -}}
{{- default (include "tunevault.fullname" .) .Values.auth.existingSecret -}}
{{- end -}}

{{- define "tunevault.masterKeySecretName" -}}
{{- default (include "tunevault.fullname" .) .Values.encryption.existingSecret -}}
{{- end -}}

{{- define "tunevault.tlsSecretName" -}}
{{- default (printf "%s-tls" (include "tunevault.fullname" .)) .Values.tls.existingSecret -}}
{{- end -}}

{{/* The DNS name of the gRPC Service. */}}
{{- define "tunevault.serviceDNS" -}}
{{- printf "%s.%s.svc.%s" (include "tunevault.fullname" .) (include "tunevault.namespace" .) .Values.clusterDomain -}}
{{- end -}}

{{/* The name a TLS client verifies the server certificate against. */}}
{{- define "tunevault.tlsServerName" -}}
{{- default (include "tunevault.serviceDNS" .) .Values.tls.serverName -}}
{{- end -}}

{{/*
Arguments of files/health_check.py after the address: the service name, then the TLS
material the client needs. Kubelet's native gRPC probe speaks plaintext only, so with TLS on
the probes and the helm test run this script instead.
*/}}
{{- define "tunevault.healthCheckArgs" -}}
- {{ .service | quote }}
{{- $ctx := .context }}
{{- if $ctx.Values.tls.enabled }}
- --server-name={{ include "tunevault.tlsServerName" $ctx }}
{{- if $ctx.Values.tls.caFilename }}
- --ca=/etc/tunevault/tls/{{ $ctx.Values.tls.caFilename }}
{{- end }}
{{- if $ctx.Values.tls.requireClientCert }}
- --cert=/etc/tunevault/tls/{{ $ctx.Values.tls.certFilename }}
- --key=/etc/tunevault/tls/{{ $ctx.Values.tls.keyFilename }}
{{- end }}
{{- end }}
{{- end -}}

{{/* One probe: native gRPC without TLS, the health-check script with TLS. */}}
{{- define "tunevault.probe" -}}
{{- $probe := omit .probe "enabled" -}}
{{- if .context.Values.tls.enabled -}}
exec:
  command:
    - python
    - -c
    - {{ .context.Files.Get "files/health_check.py" | toJson }}
    - 127.0.0.1:{{ .context.Values.containerPorts.grpc }}
    {{- include "tunevault.healthCheckArgs" (dict "service" .service "context" .context) | nindent 4 }}
{{- else -}}
grpc:
  port: {{ .context.Values.containerPorts.grpc }}
  service: {{ .service | quote }}
{{- end }}
{{ toYaml $probe }}
{{- end -}}

{{/* A container securityContext without the chart's "enabled" switch. */}}
{{- define "tunevault.containerSecurityContext" -}}
{{- if .Values.containerSecurityContext.enabled -}}
{{ omit .Values.containerSecurityContext "enabled" | toYaml }}
{{- end -}}
{{- end -}}

{{/* Resources of the model-import init containers: their own, else the server's without GPUs. */}}
{{- define "tunevault.modelImportResources" -}}
{{- $res := .Values.modelImport.resources -}}
{{- if not $res -}}
{{- $res = dict -}}
{{- $gpu := .Values.gpu.resourceName -}}
{{- $server := include "tunevault.resources" . | fromYaml -}}
{{- with $server.requests }}{{ $_ := set $res "requests" (omit . $gpu) }}{{ end -}}
{{- with $server.limits }}{{ $_ := set $res "limits" (omit . $gpu) }}{{ end -}}
{{- end -}}
{{- if $res -}}
{{ toYaml $res }}
{{- end -}}
{{- end -}}

{{/*
Every cross-field rule in one place; all messages are gathered and reported together.
The single-replica rule and value types live in values.schema.json.
*/}}
{{- define "tunevault.validateValues" -}}
{{- $messages := list -}}
{{- if and .Values.tls.enabled (not .Values.tls.existingSecret) (not .Values.tls.autoGenerated) -}}
{{- $messages = append $messages "tls.enabled: set tls.existingSecret to a Secret holding the certificate and key, or tls.autoGenerated=true for a self-signed one" -}}
{{- end -}}
{{- if and .Values.tls.enabled .Values.tls.requireClientCert (not .Values.tls.caFilename) -}}
{{- $messages = append $messages "tls.requireClientCert: needs tls.caFilename, the CA that signs client certificates" -}}
{{- end -}}
{{- if and .Values.modelImport.enabled .Values.modelStore.existingClaim .Values.modelStore.readOnly (or .Values.modelImport.default .Values.modelImport.models) -}}
{{- $messages = append $messages "modelImport: the model store is mounted read-only (modelStore.readOnly=true); set modelStore.readOnly=false or modelImport.enabled=false" -}}
{{- end -}}
{{- if and .Values.modelImport.enabled .Values.modelImport.models (not .Values.modelImport.source.existingClaim) (not .Values.modelImport.source.volume) -}}
{{- $messages = append $messages "modelImport.models: set modelImport.source.existingClaim or modelImport.source.volume, the volume the models are read from" -}}
{{- end -}}
{{- if lt (int .Values.terminationGracePeriodSeconds) (add (int .Values.shutdownGraceSeconds) 30 | int) -}}
{{- $messages = append $messages (printf "terminationGracePeriodSeconds: %v leaves no time to checkpoint after shutdownGraceSeconds=%v; give it at least %v" .Values.terminationGracePeriodSeconds .Values.shutdownGraceSeconds (add .Values.shutdownGraceSeconds 30)) -}}
{{- end -}}
{{- if and (not .Values.persistence.enabled) .Values.persistence.existingClaim -}}
{{- $messages = append $messages "persistence.existingClaim: is ignored unless persistence.enabled=true" -}}
{{- end -}}
{{- if and .Values.openai.enabled (has (int .Values.containerPorts.openai) (list (int .Values.containerPorts.grpc) (int .Values.containerPorts.metrics))) -}}
{{- $messages = append $messages (printf "containerPorts.openai: %v is already the gRPC or metrics port; give the OpenAI-compatible API a port of its own" .Values.containerPorts.openai) -}}
{{- end -}}
{{- if and .Values.openai.enabled (eq (int .Values.service.ports.openai) (int .Values.service.ports.grpc)) -}}
{{- $messages = append $messages (printf "service.ports.openai: %v is already service.ports.grpc; the Service needs a port of its own for each API" .Values.service.ports.openai) -}}
{{- end -}}
{{- if $messages -}}
{{- printf "\nVALUES VALIDATION:\n%s" (join "\n" $messages) | fail -}}
{{- end -}}
{{- end -}}

{{/* Mounts shared by the server and the model-import containers: data, models, scratch. */}}
{{- define "tunevault.storageMounts" -}}
- name: data
  mountPath: /data
{{- if .Values.modelStore.existingClaim }}
- name: models
  mountPath: /models
  readOnly: {{ .Values.modelStore.readOnly }}
  {{- with .Values.modelStore.subPath }}
  subPath: {{ . }}
  {{- end }}
{{- end }}
- name: tmp
  mountPath: /tmp
- name: home
  mountPath: /home/tunevault
{{- end -}}

{{/* Training workers in the pod: one per GPU, one on a CPU-only pod. */}}
{{- define "tunevault.workers" -}}
{{- max 1 (int .Values.gpu.count) -}}
{{- end -}}

{{/* CPU and memory of the server container: sizing.base + sizing.perGpu x workers, under what
resources.requests / resources.limits set explicitly (those win). No GPUs here; the Deployment adds them. */}}
{{- define "tunevault.resources" -}}
{{- $n := int (include "tunevault.workers" .) -}}
{{- $base := .Values.sizing.base -}}
{{- $per := .Values.sizing.perGpu -}}
{{- $requests := dict "cpu" (toString (add (int $base.cpu) (mul (int $per.cpu) $n))) "memory" (printf "%dGi" (add (int $base.memoryGi) (mul (int $per.memoryGi) $n))) -}}
{{- $limits := dict "memory" (printf "%dGi" (add (int $base.memoryLimitGi) (mul (int $per.memoryLimitGi) $n))) -}}
{{- $given := .Values.resources | default (dict) -}}
{{- $requests = merge (deepCopy ($given.requests | default (dict))) $requests -}}
{{- $limits = merge (deepCopy ($given.limits | default (dict))) $limits -}}
{{ toYaml (dict "requests" $requests "limits" $limits) }}
{{- end -}}

{{/* Size of the memory-backed /dev/shm: shm.sizeLimit, else sizing.perGpu.shmGi per worker. */}}
{{- define "tunevault.shmSize" -}}
{{- .Values.shm.sizeLimit | default (printf "%dGi" (mul (int .Values.sizing.perGpu.shmGi) (int (include "tunevault.workers" .)))) -}}
{{- end -}}

{{/* TUNEVAULT_K8S_* for `serve --executor kubernetes` (scheduler/kubernetes.py settings_from_env). */}}
{{- define "tunevault.clusterExecutorEnv" -}}
- name: TUNEVAULT_K8S_NAMESPACE
  value: {{ include "tunevault.namespace" . }}
- name: TUNEVAULT_K8S_IMAGE
  value: {{ include "tunevault.image" . }}
- name: TUNEVAULT_K8S_DATA_CLAIM
  value: {{ include "tunevault.dataClaimName" . }}
{{- with .Values.modelStore.existingClaim }}
- name: TUNEVAULT_K8S_MODELS_CLAIM
  value: {{ . }}
- name: TUNEVAULT_K8S_MODELS_SUB_PATH
  value: {{ $.Values.modelStore.subPath | quote }}
{{- end }}
{{- with .Values.clusterExecutor.queueName }}
- name: TUNEVAULT_K8S_QUEUE_NAME
  value: {{ . }}
{{- end }}
{{- if .Values.encryption.enabled }}
- name: TUNEVAULT_K8S_MASTER_KEY_SECRET
  value: {{ include "tunevault.masterKeySecretName" . }}
- name: TUNEVAULT_K8S_MASTER_KEY_SECRET_KEY
  value: {{ .Values.encryption.existingSecretKey }}
{{- end }}
- name: TUNEVAULT_K8S_CO_LOCATE_WITH
  value: {{ include "tunevault.selectorLabels" . | fromYaml | toJson | quote }}
- name: TUNEVAULT_K8S_NODE_SELECTOR
  value: {{ merge (dict) .Values.nodeSelector .Values.gpu.nodeSelector | toJson | quote }}
- name: TUNEVAULT_K8S_TOLERATIONS
  value: {{ .Values.gpu.tolerations | toJson | quote }}
{{- end -}}
