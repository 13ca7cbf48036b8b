{{/*
Names, labels, the image reference, the agent's command and arguments, and the checks that
refuse inconsistent values (each `fail` names the value to fix).
*/}}

{{- define "gpu-power-agent.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "gpu-power-agent.fullname" -}}
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

{{- define "gpu-power-agent.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gpu-power-agent.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "gpu-power-agent.labels" -}}
{{ include "gpu-power-agent.selectorLabels" . }}
app.kubernetes.io/component: node-agent
app.kubernetes.io/part-of: gpu-power-agent
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}

{{/* The generated description of the container command (src/permissions/manifests.ts). */}}
{{- define "gpu-power-agent.spec" -}}
{{- .Files.Get "files/agent-command.json" | required "files/agent-command.json is missing: run deno task manifests" }}
{{- end }}

{{/* Whether the mapping mode needs the host's PID namespace / the kubelet's PodResources socket. */}}
{{- define "gpu-power-agent.hostPID" -}}
{{- if has .Values.podGpuMapping (list "processes" "auto") }}true{{ end }}
{{- end }}
{{- define "gpu-power-agent.podResources" -}}
{{- if has .Values.podGpuMapping (list "pod-resources" "auto") }}true{{ end }}
{{- end }}

{{/* image: repository@digest or repository:tag (default tag: the chart's appVersion). */}}
{{- define "gpu-power-agent.image" -}}
{{- $image := .Values.image }}
{{- if $image.digest }}
{{- printf "%s@%s" $image.repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $image.repository (default .Chart.AppVersion $image.tag) }}
{{- end }}
{{- end }}

{{/*
The container command: `deno run` with the kubernetes permission set, built from
files/agent-command.json (generated from src/permissions/permission_set.ts): the base grants,
the metrics listener on metrics.port, and the grants of each enabled feature.
*/}}
{{- define "gpu-power-agent.command" -}}
{{- $spec := include "gpu-power-agent.spec" . | fromJson }}
{{- $extra := list }}
{{- if .Values.nodePolicy.enabled }}
{{- $extra = concat $extra $spec.features.nodePolicy }}
{{- end }}
{{- if include "gpu-power-agent.podResources" . }}
{{- $extra = concat $extra $spec.features.podResources }}
{{- end }}
{{- $command := $spec.command }}
{{- range $grant := $spec.grants }}
{{- $values := $grant.values }}
{{- if eq $grant.flag "--allow-net" }}
{{- $values = prepend $values (printf "%s:%d" $spec.metricsHost (int $.Values.metrics.port)) }}
{{- end }}
{{- range $e := $extra }}
{{- if eq $e.flag $grant.flag }}
{{- $values = concat $values $e.values }}
{{- end }}
{{- end }}
{{- if $values }}
{{- $command = append $command (printf "%s=%s" $grant.flag (join "," $values)) }}
{{- end }}
{{- end }}
{{- toYaml (concat $command $spec.tail) }}
{{- end }}

{{/* The agent's arguments. Flags of later agent versions only when their value is not the default. */}}
{{- define "gpu-power-agent.args" -}}
{{- $v := .Values }}
{{- $layout := (include "gpu-power-agent.spec" . | fromJson).layout }}
{{- $args := list "run" "--source" "kubernetes" "--state-dir" $layout.stateDir "--proc-root" $layout.procRoot }}
{{- $args = concat $args (list "--metrics-address" (printf "0.0.0.0:%d" (int $v.metrics.port))) }}
{{- $args = concat $args (list "--safe-default-watts" (toString $v.safeDefaultWatts)) }}
{{- $args = concat $args (list "--annotation" $v.annotation "--log-level" $v.logLevel "--log-format" $v.logFormat) }}
{{- if $v.rbac.namespaceRestricted }}
{{- $args = concat $args (list "--namespace" $v.rbac.namespace) }}
{{- end }}
{{- with $v.allowedNamespaces }}
{{- $args = concat $args (list "--allowed-namespaces" (join "," .)) }}
{{- end }}
{{- if not (kindIs "invalid" $v.minWatts) }}
{{- $args = concat $args (list "--min-watts" (toString $v.minWatts)) }}
{{- end }}
{{- if not (kindIs "invalid" $v.maxWatts) }}
{{- $args = concat $args (list "--max-watts" (toString $v.maxWatts)) }}
{{- end }}
{{- /* Always explicit: the grants, hostPID and the socket mount follow this value. */}}
{{- $args = concat $args (list "--pod-gpu-mapping" $v.podGpuMapping) }}
{{- if include "gpu-power-agent.podResources" . }}
{{- $args = concat $args (list "--pod-resources-socket" $layout.podResourcesSocket) }}
{{- end }}
{{- if $v.nodePolicy.enabled }}
{{- $args = concat $args (list "--caps-file" $layout.nodePolicyFile) }}
{{- end }}
{{- if not $v.nodeBudgetAnnotation.enabled }}
{{- $args = concat $args (list "--no-node-budget-annotation") }}
{{- end }}
{{- if not (kindIs "invalid" $v.enforceGraceSeconds) }}
{{- $args = concat $args (list "--enforce-grace" (toString $v.enforceGraceSeconds)) }}
{{- end }}
{{- toYaml (concat $args $v.extraArgs) }}
{{- end }}

{{/* The node policy caps file (ConfigMap). */}}
{{- define "gpu-power-agent.nodePolicyCaps" -}}
{{- $caps := merge (dict "version" 1) (deepCopy .Values.nodePolicy.caps) }}
{{- if not (kindIs "invalid" .Values.nodePolicy.budgetWatts) }}
{{- $_ := set $caps "budget" (dict "watts" .Values.nodePolicy.budgetWatts) }}
{{- end }}
{{- toYaml $caps }}
{{- end }}

{{/* Refuse inconsistent values. Included by every template that depends on them. */}}
{{- define "gpu-power-agent.validate" -}}
{{- $v := .Values }}
{{- $image := $v.image }}
{{- if and $image.tag $image.digest }}
{{- fail (printf "image: set image.tag (%q) or image.digest (%q), not both" $image.tag $image.digest) }}
{{- end }}
{{- if eq (lower (default .Chart.AppVersion $image.tag)) "latest" }}
{{- fail (printf "image.tag %q is refused: pin a version or set image.digest, so every node runs the same agent" $image.tag) }}
{{- end }}
{{- if and $image.digest (not (regexMatch "^sha256:[0-9a-f]{64}$" $image.digest)) }}
{{- fail (printf "image.digest %q must be sha256: followed by 64 lowercase hex digits" $image.digest) }}
{{- end }}
{{- if kindIs "invalid" $v.safeDefaultWatts }}
{{- fail "safeDefaultWatts is required: the cap in watts for GPUs whose pods disagree or ask invalidly, e.g. --set safeDefaultWatts=500" }}
{{- end }}
{{- if le (float64 $v.safeDefaultWatts) 0.0 }}
{{- fail (printf "safeDefaultWatts must be a positive number of watts, got %v" $v.safeDefaultWatts) }}
{{- end }}
{{- if lt (int $v.terminationGracePeriodSeconds) 60 }}
{{- fail (printf "terminationGracePeriodSeconds must be at least 60 (the agent restores every GPU on SIGTERM), got %v" $v.terminationGracePeriodSeconds) }}
{{- end }}
{{- if and $v.rbac.namespaceRestricted (not $v.rbac.namespace) }}
{{- fail "rbac.namespaceRestricted needs rbac.namespace: the namespace whose pods the agent watches (the Role lives there and --namespace names it)" }}
{{- end }}
{{- if and $v.rbac.namespace (not $v.rbac.namespaceRestricted) }}
{{- fail (printf "rbac.namespace %q is set but rbac.namespaceRestricted is false: set both (Role + --namespace) or neither (ClusterRole)" $v.rbac.namespace) }}
{{- end }}
{{- if and $v.rbac.namespaceRestricted $v.allowedNamespaces (not (has $v.rbac.namespace $v.allowedNamespaces)) }}
{{- fail (printf "allowedNamespaces %v leaves out rbac.namespace %q, the only namespace the agent can see: no annotation would be honoured" $v.allowedNamespaces $v.rbac.namespace) }}
{{- end }}
{{- range $key := list "minWatts" "maxWatts" }}
{{- $w := index $v $key }}
{{- if and (not (kindIs "invalid" $w)) (le (float64 $w) 0.0) }}
{{- fail (printf "%s must be a positive number of watts, got %v" $key $w) }}
{{- end }}
{{- end }}
{{- if and (not (kindIs "invalid" $v.minWatts)) (not (kindIs "invalid" $v.maxWatts)) (gt (float64 $v.minWatts) (float64 $v.maxWatts)) }}
{{- fail (printf "minWatts (%v) is above maxWatts (%v)" $v.minWatts $v.maxWatts) }}
{{- end }}
{{- if $v.nodePolicy.enabled }}
{{- if and (kindIs "invalid" $v.nodePolicy.budgetWatts) (not $v.nodePolicy.caps) }}
{{- fail "nodePolicy.enabled needs nodePolicy.budgetWatts or nodePolicy.caps (the node policy caps file would be empty)" }}
{{- end }}
{{- if and (not (kindIs "invalid" $v.nodePolicy.budgetWatts)) (le (float64 $v.nodePolicy.budgetWatts) 0.0) }}
{{- fail (printf "nodePolicy.budgetWatts must be a positive number of watts, got %v" $v.nodePolicy.budgetWatts) }}
{{- end }}
{{- if and (not (kindIs "invalid" $v.nodePolicy.budgetWatts)) (hasKey $v.nodePolicy.caps "budget") }}
{{- fail "nodePolicy: set the budget with nodePolicy.budgetWatts or nodePolicy.caps.budget, not both" }}
{{- end }}
{{- else if or (not (kindIs "invalid" $v.nodePolicy.budgetWatts)) $v.nodePolicy.caps }}
{{- fail "nodePolicy.budgetWatts/nodePolicy.caps are set but nodePolicy.enabled is false: enable it or remove them" }}
{{- end }}
{{- if and (not (kindIs "invalid" $v.enforceGraceSeconds)) (lt (int $v.enforceGraceSeconds) 0) }}
{{- fail (printf "enforceGraceSeconds must be 0 or more seconds, got %v" $v.enforceGraceSeconds) }}
{{- end }}
{{- if or (lt (int $v.metrics.port) 1) (gt (int $v.metrics.port) 65535) }}
{{- fail (printf "metrics.port must be 1–65535, got %v" $v.metrics.port) }}
{{- end }}
{{- if and $v.metrics.podMonitor.enabled $v.metrics.serviceMonitor.enabled }}
{{- fail "metrics.podMonitor.enabled and metrics.serviceMonitor.enabled are both true: enable one, or every series is scraped twice" }}
{{- end }}
{{- $owned := list "--source" "--state-dir" "--proc-root" "--metrics-address" "--safe-default-watts" "--annotation" "--log-level" "--log-format" "--namespace" "--allowed-namespaces" "--min-watts" "--max-watts" "--pod-gpu-mapping" "--pod-resources-socket" "--caps-file" "--enforce-grace" "--node-name" }}
{{- range $arg := $v.extraArgs }}
{{- $flag := regexReplaceAll "=.*$" $arg "" }}
{{- if has $flag $owned }}
{{- fail (printf "extraArgs: %s is set by the chart's values (see values.yaml), not by extraArgs" $flag) }}
{{- end }}
{{- end }}
{{- end }}
