//go:build tools

// Package tools pins crictl, which removes the node's pods through the CRI on teardown.
package tools

import _ "sigs.k8s.io/cri-tools/cmd/crictl"
