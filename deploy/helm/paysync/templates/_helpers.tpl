{{/* Names, labels and the TOML rendering of .Values.config. */}}

{{- define "paysync.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "paysync.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "paysync.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "paysync.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "paysync.selectorLabels" -}}
app.kubernetes.io/name: {{ include "paysync.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "paysync.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "paysync.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "paysync.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "paysync.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Where the app secret is mounted. */}}
{{- define "paysync.secretDir" -}}/var/run/secrets/paysync{{- end -}}

{{/* Where the proxy password Secret and the CA bundle are mounted. */}}
{{- define "paysync.proxySecretDir" -}}/var/run/secrets/paysync-proxy{{- end -}}
{{- define "paysync.caDir" -}}/etc/paysync-ca{{- end -}}

{{/*
The configuration as paysync reads it: the user's `config`, with what the
chart owns laid over it. Secrets given in values are refused.
*/}}
{{- define "paysync.config" -}}
{{- $config := deepCopy .Values.config -}}
{{- $top := default dict (get $config "top") -}}
{{- range $key := list "app_secret" "app_secret_file" "session" -}}
{{- if hasKey $top $key -}}
{{- fail (printf "config.top.%s: secrets never go into values or the ConfigMap; use topSecret" $key) -}}
{{- end -}}
{{- end -}}
{{- range $key := list "proxy_password" "proxy_password_file" -}}
{{- if hasKey $top $key -}}
{{- fail (printf "config.top.%s: secrets never go into values or the ConfigMap; use topProxy.passwordSecret" $key) -}}
{{- end -}}
{{- end -}}
{{- with .Values.topProxy -}}
{{- if .url -}}{{- $_ := set $top "proxy_url" .url -}}{{- end -}}
{{- if .username -}}{{- $_ := set $top "proxy_username" .username -}}{{- end -}}
{{- if .noProxy -}}{{- $_ := set $top "no_proxy" .noProxy -}}{{- end -}}
{{- if and .passwordSecret.name (not .url) -}}
{{- fail "topProxy.passwordSecret: set topProxy.url too; a password alone names no proxy" -}}
{{- end -}}
{{- end -}}
{{- with .Values.topCaBundle -}}
{{- if and .secretName .configMapName -}}
{{- fail "topCaBundle: set secretName or configMapName, not both" -}}
{{- end -}}
{{- if or .secretName .configMapName -}}
{{- $_ := set $top "ca_file" (printf "%s/%s" (include "paysync.caDir" $) .key) -}}
{{- $_ := set $top "tls_roots" .roots -}}
{{- else if eq .roots "file" -}}
{{- fail "topCaBundle.roots = file needs topCaBundle.secretName or configMapName" -}}
{{- else if ne .roots "builtin" -}}
{{- $_ := set $top "tls_roots" .roots -}}
{{- end -}}
{{- end -}}
{{- $librdkafka := default dict (dig "kafka" "librdkafka" dict $config) -}}
{{- range $key, $_ := $librdkafka -}}
{{- if or (contains "password" $key) (contains "secret" $key) -}}
{{- fail (printf "config.kafka.librdkafka.%s: secret values never go into the ConfigMap; use kafkaSecretProperties" $key) -}}
{{- end -}}
{{- end -}}
{{- $_ := set $top "app_secret_file" (printf "%s/%s" (include "paysync.secretDir" .) .Values.topSecret.appSecretKey) -}}
{{- $_ := set $config "top" $top -}}
{{- $admin := default dict (get $config "admin") -}}
{{- $_ := set $admin "listen" (printf "0.0.0.0:%d" (int .Values.adminPort)) -}}
{{- $_ := set $config "admin" $admin -}}
{{- $kafka := default dict (get $config "kafka") -}}
{{- if .Values.staticMembership.enabled -}}
{{- $_ := set $kafka "group_instance_id_from_hostname" true -}}
{{- end -}}
{{- $_ := set $config "kafka" $kafka -}}
{{- toJson $config -}}
{{- end -}}

{{/* One TOML value: strings as JSON strings (valid TOML), whole numbers without a fraction. */}}
{{- define "paysync.tomlValue" -}}
{{- $v := . -}}
{{- if kindIs "string" $v -}}
{{- toJson $v -}}
{{- else if kindIs "bool" $v -}}
{{- $v -}}
{{- else if or (kindIs "float64" $v) (kindIs "int64" $v) (kindIs "int" $v) -}}
{{- if eq (float64 $v) (float64 (int64 $v)) -}}{{- int64 $v -}}{{- else -}}{{- $v -}}{{- end -}}
{{- else if kindIs "slice" $v -}}
[{{- range $i, $item := $v -}}{{- if $i -}}, {{ end -}}{{- include "paysync.tomlValue" $item -}}{{- end -}}]
{{- else -}}
{{- fail (printf "cannot write %v (%s) as a TOML value" $v (kindOf $v)) -}}
{{- end -}}
{{- end -}}

{{/*
A TOML table: its scalar keys, then its sub-tables (TOML wants them in that
order). Keys are quoted, so librdkafka's dotted names stay one key.
Argument: (list "header path" dict).
*/}}
{{- define "paysync.tomlTable" -}}
{{- $path := index . 0 -}}
{{- $table := index . 1 -}}
{{- range $key := keys $table | sortAlpha -}}
{{- $value := get $table $key -}}
{{- if and (not (kindIs "map" $value)) (not (kindIs "invalid" $value)) }}
{{ toJson $key }} = {{ include "paysync.tomlValue" $value }}
{{- end -}}
{{- end -}}
{{- range $key := keys $table | sortAlpha -}}
{{- $value := get $table $key -}}
{{- if kindIs "map" $value -}}
{{- $header := ternary (toJson $key) (printf "%s.%s" $path (toJson $key)) (eq $path "") }}

[{{ $header }}]
{{- include "paysync.tomlTable" (list $header $value) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
The container's environment, mounts and volumes: the StatefulSet's and the
reconciliation CronJob's, which read the same configuration and secrets.
*/}}
{{- define "paysync.env" -}}
{{- if .Values.topSecret.sessionKey }}
- name: PAYSYNC_TOP__SESSION
  valueFrom:
    secretKeyRef:
      name: {{ .Values.topSecret.name }}
      key: {{ .Values.topSecret.sessionKey }}
{{- end }}
{{- if .Values.topProxy.passwordSecret.name }}
# A path, not the password: the Secret is mounted below.
- name: PAYSYNC_TOP__PROXY_PASSWORD_FILE
  value: {{ printf "%s/%s" (include "paysync.proxySecretDir" .) .Values.topProxy.passwordSecret.key | quote }}
{{- end }}
{{- range .Values.kafkaSecretProperties }}
- name: {{ printf "PAYSYNC_KAFKA__LIBRDKAFKA__%s" .property | quote }}
  valueFrom:
    secretKeyRef:
      name: {{ .secretName }}
      key: {{ .key }}
{{- end }}
{{- with .Values.extraEnv }}
{{- toYaml . | nindent 0 }}
{{- end }}
{{- end }}

{{- define "paysync.volumeMounts" -}}
- name: config
  mountPath: /etc/paysync
  readOnly: true
- name: top-secret
  mountPath: {{ include "paysync.secretDir" . }}
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- range $index, $file := .Values.kafkaSecretFiles }}
- name: {{ printf "kafka-secret-%d" $index }}
  mountPath: {{ $file.mountPath }}
  readOnly: true
{{- end }}
{{- if .Values.topProxy.passwordSecret.name }}
- name: proxy-secret
  mountPath: {{ include "paysync.proxySecretDir" . }}
  readOnly: true
{{- end }}
{{- if or .Values.topCaBundle.secretName .Values.topCaBundle.configMapName }}
- name: top-ca
  mountPath: {{ include "paysync.caDir" . }}
  readOnly: true
{{- end }}
{{- end }}

{{- define "paysync.volumes" -}}
- name: config
  configMap:
    name: {{ include "paysync.fullname" . }}
- name: top-secret
  secret:
    secretName: {{ required "topSecret.name: the Secret holding the TOP app secret" .Values.topSecret.name }}
    items:
      - key: {{ .Values.topSecret.appSecretKey }}
        path: {{ .Values.topSecret.appSecretKey }}
- name: tmp
  emptyDir:
    sizeLimit: 16Mi
{{- range $index, $file := .Values.kafkaSecretFiles }}
- name: {{ printf "kafka-secret-%d" $index }}
  secret:
    secretName: {{ $file.secretName }}
{{- end }}
{{- with .Values.topProxy.passwordSecret }}
{{- if .name }}
- name: proxy-secret
  secret:
    secretName: {{ .name }}
    items:
      - key: {{ .key }}
        path: {{ .key }}
{{- end }}
{{- end }}
{{- with .Values.topCaBundle }}
{{- if .secretName }}
- name: top-ca
  secret:
    secretName: {{ .secretName }}
    items:
      - key: {{ .key }}
        path: {{ .key }}
{{- else if .configMapName }}
- name: top-ca
  configMap:
    name: {{ .configMapName }}
    items:
      - key: {{ .key }}
        path: {{ .key }}
{{- end }}
{{- end }}
{{- end }}
