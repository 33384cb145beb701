// Command k8s-validate reads a multi-document YAML stream (the output of
// `helm template`) and decodes every document into its Kubernetes API type
// strictly: an unknown or misspelt field, a value of the wrong type or a
// duplicate key is an error. Kinds it does not know are errors too, so a new
// template cannot slip past unchecked.
package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"

	kedav1alpha1 "github.com/kedacore/keda/v2/apis/keda/v1alpha1"
	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

// object returns an empty value of the API type for apiVersion and kind.
func object(apiVersion, kind string) (any, bool) {
	switch apiVersion + "/" + kind {
	case "v1/ConfigMap":
		return &corev1.ConfigMap{}, true
	case "v1/Service":
		return &corev1.Service{}, true
	case "v1/ServiceAccount":
		return &corev1.ServiceAccount{}, true
	case "v1/Secret":
		return &corev1.Secret{}, true
	case "apps/v1/StatefulSet":
		return &appsv1.StatefulSet{}, true
	case "apps/v1/Deployment":
		return &appsv1.Deployment{}, true
	case "networking.k8s.io/v1/Ingress":
		return &networkingv1.Ingress{}, true
	case "batch/v1/CronJob":
		return &batchv1.CronJob{}, true
	case "policy/v1/PodDisruptionBudget":
		return &policyv1.PodDisruptionBudget{}, true
	case "monitoring.coreos.com/v1/ServiceMonitor":
		return &monitoringv1.ServiceMonitor{}, true
	case "monitoring.coreos.com/v1/PrometheusRule":
		return &monitoringv1.PrometheusRule{}, true
	case "keda.sh/v1alpha1/ScaledObject":
		return &kedav1alpha1.ScaledObject{}, true
	}
	return nil, false
}

// hasContent says whether a document holds more than comments and blank lines.
func hasContent(doc []byte) bool {
	for _, line := range bytes.Split(doc, []byte("\n")) {
		line = bytes.TrimSpace(line)
		if len(line) > 0 && line[0] != '#' && !bytes.Equal(line, []byte("---")) {
			return true
		}
	}
	return false
}

func main() {
	reader := utilyaml.NewYAMLReader(bufio.NewReader(os.Stdin))
	decoded, failed := 0, 0
	for {
		doc, err := reader.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "k8s-validate: cannot read the stream: %v\n", err)
			os.Exit(2)
		}
		if !hasContent(doc) {
			continue
		}
		var head struct {
			APIVersion string `json:"apiVersion"`
			Kind       string `json:"kind"`
			Metadata   struct {
				Name string `json:"name"`
			} `json:"metadata"`
		}
		if err := yaml.Unmarshal(doc, &head); err != nil {
			fmt.Fprintf(os.Stderr, "k8s-validate: a document is not YAML: %v\n", err)
			failed++
			continue
		}
		target, known := object(head.APIVersion, head.Kind)
		if !known {
			fmt.Fprintf(os.Stderr, "k8s-validate: %s %q: unknown apiVersion/kind %q\n", head.Kind, head.Metadata.Name, head.APIVersion+"/"+head.Kind)
			failed++
			continue
		}
		if err := yaml.UnmarshalStrict(doc, target); err != nil {
			fmt.Fprintf(os.Stderr, "k8s-validate: %s %q: %v\n", head.Kind, head.Metadata.Name, err)
			failed++
			continue
		}
		if head.Metadata.Name == "" {
			fmt.Fprintf(os.Stderr, "k8s-validate: a %s has no metadata.name\n", head.Kind)
			failed++
			continue
		}
		decoded++
	}
	fmt.Printf("k8s-validate: %d objects decoded strictly, %d failed\n", decoded, failed)
	if failed > 0 || decoded == 0 {
		os.Exit(1)
	}
}
