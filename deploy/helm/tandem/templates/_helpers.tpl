{{/* Chart name, overridable. */}}
{{- define "tandem.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* "<release>-<chart>" unless the release name already holds the chart name. */}}
{{- define "tandem.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "tandem.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "tandem.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "tandem.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels of one component; call with (dict "ctx" $ "component" "router"). */}}
{{- define "tandem.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tandem.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "tandem.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* The router's in-cluster gRPC address, as workers dial it. */}}
{{/* What workers and the store dial: the headless Service, whose DNS name
stands for every router pod (the binary resolves it to all of them and
again every few seconds, worker_common/router_set.h). */}}
{{- define "tandem.routerAddress" -}}
{{ include "tandem.fullname" . }}-router-peers:{{ .Values.router.port }}
{{- end -}}

{{/* Where the ConfigMap is mounted and the file every container reads. */}}
{{- define "tandem.configPath" -}}/etc/tandem/config.json{{- end -}}
{{- define "tandem.tlsDir" -}}/etc/tandem/tls{{- end -}}

{{/* Env every container gets: its pod IP, which it binds (--host $(POD_IP)). */}}
{{- define "tandem.podIpEnv" -}}
- name: POD_IP
  valueFrom:
    fieldRef:
      fieldPath: status.podIP
{{- end -}}

{{/*
Readiness and liveness probes on a gRPC port: the native gRPC probe
(grpc.health.v1.Health) in plaintext, tcpSocket with TLS (kubelet's gRPC
probe cannot do TLS). Call with (dict "ctx" $ "port" 50051).
*/}}
{{- define "tandem.probes" -}}
{{- $probe := ternary (dict "tcpSocket" (dict "port" (int .port))) (dict "grpc" (dict "port" (int .port))) .ctx.Values.tls.enabled -}}
readinessProbe:
  {{- toYaml $probe | nindent 2 }}
  {{- toYaml .ctx.Values.probes.readiness | nindent 2 }}
livenessProbe:
  {{- toYaml $probe | nindent 2 }}
  {{- toYaml .ctx.Values.probes.liveness | nindent 2 }}
{{- end -}}

{{/* Volume mounts every container gets; call with the root context. */}}
{{- define "tandem.volumeMounts" -}}
- name: config
  mountPath: /etc/tandem/config.json
  subPath: config.json
  readOnly: true
{{- if .Values.tls.enabled }}
- name: tls
  mountPath: {{ include "tandem.tlsDir" . }}
  readOnly: true
{{- end }}
{{- if .Values.model.volume }}
- name: model
  mountPath: {{ .Values.model.mountPath }}
  readOnly: true
{{- end }}
{{- end -}}

{{- define "tandem.volumes" -}}
- name: config
  configMap:
    name: {{ include "tandem.fullname" . }}-config
{{- if .Values.tls.enabled }}
- name: tls
  secret:
    secretName: {{ .Values.tls.secretName }}
    defaultMode: 0400
{{- end }}
{{- if .Values.model.volume }}
- name: model
  {{- toYaml .Values.model.volume | nindent 2 }}
{{- end }}
{{- end -}}

{{/*
A worker role's kernel backend (--device): its `device` value, else cuda when
the role asks for GPUs and cpu when it does not, so a pod that holds a GPU
uses it. Call with (dict "ctx" $ "role" "prefill").
*/}}
{{- define "tandem.device" -}}
{{- $w := index .ctx.Values .role -}}
{{- $d := $w.device | default (ternary "cuda" "cpu" (gt (int $w.gpus) 0)) -}}
{{- if not (has $d (list "cuda" "cpu" "cpu-guarded" "auto")) -}}
{{- fail (printf "%s.device must be cuda, cpu, cpu-guarded, auto or empty, not %q" .role $d) -}}
{{- end -}}
{{- if and (eq $d "cuda") (eq (int $w.gpus) 0) -}}
{{- fail (printf "%s.device is cuda but %s.gpus is 0: the pod would get no GPU" .role .role) -}}
{{- end -}}
{{- $d -}}
{{- end -}}

{{/*
The KV element type of every worker and the store (--kv-dtype). Workers that
exchange KV must agree, so "auto" is resolved here once, as `tandem up`
resolves it: bf16 when the workers run on CUDA, f32 on the CPU backends. Left
"auto" when a role's device is auto (each worker then picks for its own node);
a render whose prefill and decode run different backends must name one.
*/}}
{{- define "tandem.kvDtype" -}}
{{- $v := .Values.cluster.worker.kvDtype | default "auto" -}}
{{- if not (has $v (list "auto" "f32" "bf16" "f16")) -}}
{{- fail (printf "cluster.worker.kvDtype must be auto, f32, bf16 or f16, not %q" $v) -}}
{{- end -}}
{{- if ne $v "auto" -}}
{{- $v -}}
{{- else -}}
{{- $devices := list -}}
{{- range $role := list "prefill" "decode" -}}
{{- if gt (int (index $.Values $role).replicas) 0 -}}
{{- $devices = append $devices (include "tandem.device" (dict "ctx" $ "role" $role)) -}}
{{- end -}}
{{- end -}}
{{- if has "auto" $devices -}}
auto
{{- else if has "cuda" $devices -}}
{{- if eq (len (without $devices "cuda")) 0 -}}
bf16
{{- else -}}
{{- fail "prefill and decode run different backends (cuda and cpu): set cluster.worker.kvDtype (f32, bf16 or f16) so their KV agrees" -}}
{{- end -}}
{{- else -}}
f32
{{- end -}}
{{- end -}}
{{- end -}}
