{{/*
Named templates shared by every manifest of the chart (and by templates/monitoring/).
Workload templates pass a context dict: (dict "root" $ "component" "<role>" ...).
*/}}

{{/* lupita.name: the chart name, or nameOverride. */}}
{{- define "lupita.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* lupita.fullname: release-qualified name, truncated to 63 characters (DNS label). */}}
{{- define "lupita.fullname" -}}
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

{{/* lupita.chart: chart name and version for the helm.sh/chart label. */}}
{{- define "lupita.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* lupita.selectorLabels: the labels every object of this release is selected by. */}}
{{- define "lupita.selectorLabels" -}}
app.kubernetes.io/name: {{ include "lupita.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* lupita.labels: release-wide labels (no component), plus commonLabels from values. */}}
{{- define "lupita.labels" -}}
helm.sh/chart: {{ include "lupita.chart" . }}
{{ include "lupita.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: lupita
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
lupita.componentSelectorLabels (dict "root" $ "component" "media-bridge"): what a workload's pods,
its Service and its ServiceMonitor select on. component is one of media-bridge, recorder, vad,
transcriber, understanding, context-api, loadgen.
*/}}
{{- define "lupita.componentSelectorLabels" -}}
{{ include "lupita.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
lupita.componentLabels (dict "root" $ "component" "recorder"): release labels + the component, and
lupita.io/service naming the service the component belongs to (the four stages are all
"stream-processor").
*/}}
{{- define "lupita.componentLabels" -}}
{{ include "lupita.labels" .root }}
app.kubernetes.io/component: {{ .component }}
lupita.io/service: {{ include "lupita.serviceOf" .component }}
{{- end }}

{{/* lupita.serviceOf "vad" -> stream-processor; other components are their own service. */}}
{{- define "lupita.serviceOf" -}}
{{- if has . (list "recorder" "vad" "transcriber" "understanding") }}stream-processor{{ else }}{{ . }}{{ end }}
{{- end }}

{{/* lupita.componentName (dict "root" $ "component" "vad"): "<fullname>-<component>", <= 63 chars. */}}
{{- define "lupita.componentName" -}}
{{- printf "%s-%s" (include "lupita.fullname" .root | trunc (int (sub 62 (len .component))) | trimSuffix "-") .component }}
{{- end }}

{{/*
lupita.image (dict "root" $ "image" .Values.mediaBridge.image): "[registry/]repository:tag".
The tag falls back to image.tag, then to the chart's appVersion.
*/}}
{{- define "lupita.image" -}}
{{- $g := .root.Values.image }}
{{- $tag := .image.tag | default $g.tag | default .root.Chart.AppVersion }}
{{- if $g.registry }}
{{- printf "%s/%s:%s" (trimSuffix "/" $g.registry) .image.repository $tag }}
{{- else }}
{{- printf "%s:%s" .image.repository $tag }}
{{- end }}
{{- end }}

{{/* lupita.topic (dict "root" $ "name" "audio.chunks"): the topic's full name (prefix + name). */}}
{{- define "lupita.topic" -}}
{{- printf "%s%s" .root.Values.kafka.topicPrefix .name }}
{{- end }}

{{/*
lupita.stageAppId (dict "root" $ "stage" "vad"): LUPITA_APP_ID of a stage's workers. Every stage
is its own Faust app (its own consumer group): recorder and vad both read audio.chunks, and one
group would hand each partition to only one of them.
*/}}
{{- define "lupita.stageAppId" -}}
{{- $s := index .root.Values.streamProcessor.stages .stage }}
{{- $s.appId | default (printf "%s-%s" .root.Values.streamProcessor.appIdPrefix .stage) }}
{{- end }}

{{/*
lupita.stageGroupId (dict "root" $ "stage" "vad"): the Kafka consumer group of a stage, as the
worker builds it (WorkerSettings.faust_app_id = LUPITA_TOPIC_PREFIX + LUPITA_APP_ID).
*/}}
{{- define "lupita.stageGroupId" -}}
{{- printf "%s%s" .root.Values.kafka.topicPrefix (include "lupita.stageAppId" .) }}
{{- end }}

{{/* lupita.kedaActive: "true" when ScaledObjects are enabled and the API server serves them. */}}
{{- define "lupita.kedaActive" -}}
{{- if and .Values.autoscaling.keda.enabled (.Capabilities.APIVersions.Has "keda.sh/v1alpha1/ScaledObject") }}true{{ end }}
{{- end }}

{{/* lupita.serviceAccountName (dict "root" $ "component" "vad" "sa" <values.serviceAccount>). */}}
{{- define "lupita.serviceAccountName" -}}
{{- if .sa.create }}
{{- .sa.name | default (include "lupita.componentName" .) }}
{{- else }}
{{- .sa.name | default "default" }}
{{- end }}
{{- end }}

{{/* lupita.podSecurityContext: non-root user 10001 (the images' user), RuntimeDefault seccomp. */}}
{{- define "lupita.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsGroup }}
fsGroup: {{ .Values.securityContext.fsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* lupita.containerSecurityContext: read-only root, no privilege escalation, no capabilities. */}}
{{- define "lupita.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsGroup }}
allowPrivilegeEscalation: false
privileged: false
readOnlyRootFilesystem: true
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
lupita.commonEnv: the CommonSettings every service reads (environment, log level). Kafka, S3,
Postgres and Weaviate are given only to the workloads that use them (see each template).
*/}}
{{- define "lupita.commonEnv" -}}
- name: LUPITA_ENVIRONMENT
  value: {{ .Values.environment | quote }}
- name: LUPITA_LOG_LEVEL
  value: {{ .Values.logLevel | quote }}
{{- end }}

{{/* lupita.kafkaEnv: Kafka bootstrap, topic prefix, partitions and replication (CommonSettings). */}}
{{- define "lupita.kafkaEnv" -}}
- name: LUPITA_KAFKA_BOOTSTRAP
  value: {{ .Values.kafka.bootstrap | quote }}
- name: LUPITA_TOPIC_PREFIX
  value: {{ .Values.kafka.topicPrefix | quote }}
- name: LUPITA_TOPIC_PARTITIONS
  value: {{ .Values.kafka.partitions | quote }}
- name: LUPITA_TOPIC_REPLICATION
  value: {{ .Values.kafka.replication | quote }}
{{- end }}

{{/*
lupita.postgresEnv: LUPITA_POSTGRES_DSN from the existing Secret of the workload's Postgres role.
"secret" names the workload's entry of .Values.secrets: "postgresProcessor" (the recorder and
understanding stages, role lupita_processor) or "postgresContextApi" (role lupita_context_api);
while its name is empty, secrets.postgres (one user in both roles) is read instead.
*/}}
{{- define "lupita.postgresEnv" -}}
{{- $ref := index .root.Values.secrets .secret -}}
{{- if not $ref.name }}{{ $ref = .root.Values.secrets.postgres }}{{ end -}}
- name: LUPITA_POSTGRES_DSN
  valueFrom:
    secretKeyRef:
      name: {{ $ref.name | quote }}
      key: {{ $ref.dsnKey | quote }}
{{- end }}

{{/* lupita.s3Env: endpoint, region, buckets; keys only when a Secret is named (else IRSA). */}}
{{- define "lupita.s3Env" -}}
- name: LUPITA_S3_ENDPOINT
  value: {{ .Values.s3.endpoint | quote }}
- name: LUPITA_S3_REGION
  value: {{ .Values.s3.region | quote }}
- name: LUPITA_S3_LEGAL_BUCKET
  value: {{ .Values.s3.legalBucket | quote }}
- name: LUPITA_S3_ACTIVE_BUCKET
  value: {{ .Values.s3.activeBucket | quote }}
{{- if .Values.secrets.s3.name }}
- name: LUPITA_S3_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .Values.secrets.s3.name | quote }}
      key: {{ .Values.secrets.s3.accessKeyKey | quote }}
- name: LUPITA_S3_SECRET_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .Values.secrets.s3.name | quote }}
      key: {{ .Values.secrets.s3.secretKeyKey | quote }}
{{- end }}
{{- end }}

{{/* lupita.weaviateEnv: the Weaviate service's HTTP and gRPC endpoints (gRPC host only when it differs). */}}
{{- define "lupita.weaviateEnv" -}}
- name: LUPITA_WEAVIATE_HOST
  value: {{ .Values.weaviate.host | quote }}
- name: LUPITA_WEAVIATE_HTTP_PORT
  value: {{ .Values.weaviate.httpPort | quote }}
- name: LUPITA_WEAVIATE_GRPC_PORT
  value: {{ .Values.weaviate.grpcPort | quote }}
{{- with .Values.weaviate.grpcHost }}
- name: LUPITA_WEAVIATE_GRPC_HOST
  value: {{ . | quote }}
{{- end }}
{{- end }}

{{/* lupita.secretEnv (dict "env" "LUPITA_X" "secret" <name> "key" <key> "optional" bool). */}}
{{- define "lupita.secretEnv" -}}
- name: {{ .env }}
  valueFrom:
    secretKeyRef:
      name: {{ .secret | quote }}
      key: {{ .key | quote }}
      {{- if .optional }}
      optional: true
      {{- end }}
{{- end }}

{{/* lupita.settingsEnv: a workload's `settings` map (LUPITA_* name -> value), sorted. */}}
{{- define "lupita.settingsEnv" -}}
{{- $out := list }}
{{- range $name, $value := . }}
{{- $out = append $out (printf "- name: %s\n  value: %s" $name ($value | toString | quote)) }}
{{- end }}
{{- join "\n" $out }}
{{- end }}

{{/*
lupita.topologySpread (dict "root" $ "component" "vad"): spread a workload's pods over zones and
nodes (whenUnsatisfiable from values; ScheduleAnyway never blocks a single-node cluster).
*/}}
{{- define "lupita.topologySpread" -}}
{{- $ctx := . }}
{{- range .root.Values.topologySpread.topologyKeys }}
- maxSkew: {{ $ctx.root.Values.topologySpread.maxSkew }}
  topologyKey: {{ . }}
  whenUnsatisfiable: {{ $ctx.root.Values.topologySpread.whenUnsatisfiable }}
  labelSelector:
    matchLabels:
      {{- include "lupita.componentSelectorLabels" $ctx | nindent 6 }}
  matchLabelKeys:
    - pod-template-hash
{{- end }}
{{- end }}

{{/* lupita.tmpVolumeMount / lupita.tmpVolume: the writable /tmp every container gets. */}}
{{- define "lupita.tmpVolumeMount" -}}
- name: tmp
  mountPath: /tmp
{{- end }}
{{- define "lupita.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpVolume.sizeLimit }}
{{- end }}

{{/*
lupita.hostBindEnv (dict "root" $ "names" (list "LUPITA_GRPC_HOST") "settings" <the workload's settings>):
under hostNetwork, each listen-address setting of `names` is the node's address (status.hostIP,
downward API): the kubelet probes the pod IP, which is the node's, and a real kubelet refuses a
loopback node IP. A name the workload's `settings` set is left to them. Nothing without hostNetwork
(the images listen on 0.0.0.0 in their own network namespace).
*/}}
{{- define "lupita.hostBindEnv" -}}
{{- if .root.Values.hostNetwork }}
{{- $settings := .settings | default dict }}
{{- range $name := .names }}
{{- if not (hasKey $settings $name) }}
- name: {{ $name }}
  valueFrom:
    fieldRef:
      fieldPath: status.hostIP
{{- end }}
{{- end }}
{{- end }}
{{- end }}
