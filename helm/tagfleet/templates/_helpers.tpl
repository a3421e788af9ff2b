{{/*
Chart name, truncated: Kubernetes names are at most 63 characters.
*/}}
{{- define "tagfleet.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name: the release name, with the chart name appended unless it
already contains it. Truncated at 63 characters, the limit of a DNS label.
*/}}
{{- define "tagfleet.fullname" -}}
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

{{/*
Chart name and version, as used by the helm.sh/chart label.
*/}}
{{- define "tagfleet.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels on every object.
*/}}
{{- define "tagfleet.labels" -}}
helm.sh/chart: {{ include "tagfleet.chart" . }}
{{ include "tagfleet.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tagfleet
{{- end }}

{{/*
Selector labels: stable over upgrades, so never the version.
*/}}
{{- define "tagfleet.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tagfleet.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Per-component names and labels; call with (dict "ctx" $ "component" "worker").
The full name is cut first, so the component suffix always survives the 63 limit and the
scheduler's and worker's names never collide.
*/}}
{{- define "tagfleet.componentName" -}}
{{- $max := int (sub 62 (len .component)) }}
{{- printf "%s-%s" (include "tagfleet.fullname" .ctx | trunc $max | trimSuffix "-") .component }}
{{- end }}

{{- define "tagfleet.componentLabels" -}}
{{ include "tagfleet.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "tagfleet.componentSelectorLabels" -}}
{{ include "tagfleet.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
The ServiceAccount the pods run as.
*/}}
{{- define "tagfleet.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tagfleet.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The container image, its tag defaulting to the chart's appVersion.
*/}}
{{- define "tagfleet.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
The TAGFLEET_QUEUE variable: a Secret reference for RabbitMQ (the URL has credentials),
a plain value for SQS.
*/}}
{{- define "tagfleet.queueEnv" -}}
{{- if eq .Values.queue.kind "rabbitmq" -}}
- name: TAGFLEET_QUEUE
  valueFrom:
    secretKeyRef:
      name: {{ .Values.queue.rabbitmq.existingSecret }}
      key: {{ .Values.queue.rabbitmq.urlKey }}
{{- else -}}
- name: TAGFLEET_QUEUE
  value: {{ printf "sqs://%s" .Values.queue.name | quote }}
{{- end }}
{{- end }}

{{/*
The task queue of the workers' model, as core/contracts/src/routing.rs names it (keep the
two alike; scripts/test_k8s.py checks both against the same names): <base>-<name>_<version>
(each dot of the version as _) when the name is letters, digits and - and the version
dot-separated letters and digits, and fits in 76 characters; otherwise a readable prefix,
__ and 12 hex digits of the id's SHA-256.
*/}}
{{- define "tagfleet.taskQueue" -}}
{{- $base := .Values.queue.name -}}
{{- $id := .Values.model.id -}}
{{- $max := 76 -}}
{{- $short := printf "%s-%s" $base (replace "." "_" (replace "@" "_" $id)) -}}
{{- if and (regexMatch "^[A-Za-z0-9-]+@[A-Za-z0-9]+(\\.[A-Za-z0-9]+)*$" $id) (le (len $short) $max) -}}
{{- $short -}}
{{- else -}}
{{- $room := sub $max (add (len $base) 15) | int -}}
{{- if lt $room 0 -}}
{{- fail (printf "queue.name %q is too long to hold a model's part: at most 61 characters" $base) -}}
{{- end -}}
{{- printf "%s-%s__%s" $base (regexReplaceAll "[^A-Za-z0-9-]" $id "-" | trunc $room) (sha256sum $id | trunc 12) -}}
{{- end -}}
{{- end }}

{{/*
The tenants Secret volume, mounted read-only at the folder of TAGFLEET_SECRETS.
*/}}
{{- define "tagfleet.tenantsVolume" -}}
- name: tenants
  secret:
    secretName: {{ .Values.tenants.existingSecret }}
    items:
      - key: {{ .Values.tenants.key }}
        path: {{ .Values.tenants.key }}
{{- end }}

{{/*
The operator's categorizers (values.categorizers), one file each, where both processes
read them; empty when there are none.
*/}}
{{- define "tagfleet.categorizersDir" -}}
/etc/tagfleet/categorizers
{{- end }}

{{- define "tagfleet.categorizersVolume" -}}
{{- if .Values.categorizers }}
- name: categorizers
  configMap:
    name: {{ include "tagfleet.fullname" . }}-categorizers
{{- end }}
{{- end }}

{{- define "tagfleet.categorizersMount" -}}
{{- if .Values.categorizers }}
- name: categorizers
  mountPath: {{ include "tagfleet.categorizersDir" . }}
  readOnly: true
{{- end }}
{{- end }}

{{- define "tagfleet.tenantsMount" -}}
- name: tenants
  mountPath: {{ .Values.tenants.mountPath }}
  readOnly: true
{{- end }}

{{/*
The scheduler API's scheme, which is also the name of its port: https when
scheduler.tls.secretName names a TLS Secret, else http.
*/}}
{{- define "tagfleet.schedulerScheme" -}}
{{- if .Values.scheduler.tls.secretName }}https{{ else }}http{{ end }}
{{- end }}

{{/*
Where the scheduler's TLS Secret is mounted (read-only).
*/}}
{{- define "tagfleet.schedulerTlsDir" -}}
/etc/tagfleet/tls
{{- end }}
