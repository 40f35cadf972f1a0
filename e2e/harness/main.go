// Command harness is the e2e control plane and node in one program, called as
//
//	harness etcd --dir DIR --client-url URL --peer-url URL
//	harness kube-apiserver FLAGS...
//	harness kube-controller-manager FLAGS...
//	harness kube-scheduler FLAGS...
//	harness kubelet FLAGS...
//	harness kube-proxy FLAGS...
//	harness kubectl ARGS...
//	harness pki --dir DIR --server URL
//
// Each control-plane program is the upstream command of the release in
// go.mod, started from its app package exactly as its own binary would be.
// Each runs in a process of its own (e2e/cluster starts them), so their
// global flags and metrics registries never meet.
package main

import (
	"context"
	"fmt"
	"os"

	"k8s.io/component-base/cli"
	kubectl "k8s.io/kubectl/pkg/cmd"
	kubectlutil "k8s.io/kubectl/pkg/cmd/util"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	proxy "k8s.io/kubernetes/cmd/kube-proxy/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
	kubelet "k8s.io/kubernetes/cmd/kubelet/app"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: harness etcd|kube-apiserver|kube-controller-manager|kube-scheduler|kubelet|kube-proxy|kubectl|pki ...")
		os.Exit(2)
	}
	program := os.Args[1]
	// NB: each command reads its flags from os.Args[1:], as its own binary.
	os.Args = append([]string{program}, os.Args[2:]...)
	switch program {
	case "etcd":
		os.Exit(runEtcd(os.Args[1:]))
	case "pki":
		os.Exit(runPKI(os.Args[1:]))
	case "kube-apiserver":
		os.Exit(cli.Run(apiserver.NewAPIServerCommand()))
	case "kube-controller-manager":
		os.Exit(cli.Run(controllermanager.NewControllerManagerCommand()))
	case "kube-scheduler":
		os.Exit(cli.Run(scheduler.NewSchedulerCommand()))
	case "kubelet":
		os.Exit(cli.Run(kubelet.NewKubeletCommand(context.Background())))
	case "kube-proxy":
		os.Exit(cli.Run(proxy.NewProxyCommand()))
	case "kubectl":
		// NB: as kubectl's own main: errors are printed by CheckErr.
		if err := cli.RunNoErrOutput(kubectl.NewDefaultKubectlCommand()); err != nil {
			kubectlutil.CheckErr(err)
		}
	default:
		fmt.Fprintf(os.Stderr, "harness: unknown program %q\n", program)
		os.Exit(2)
	}
}
