package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"flag"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// The cluster's Service range starts at this address: the `kubernetes`
// Service's ClusterIP, which the serving certificate names.
const kubernetesServiceIP = "10.96.0.1"

// validity of every certificate the harness makes: a test cluster lives
// for minutes.
const validity = 7 * 24 * time.Hour

// A client the harness writes a kubeconfig for.
type clientIdentity struct {
	file   string
	user   string
	groups []string
	// also written as <certs>.crt and <certs>.key, when not empty
	certs string
}

// The e2e node's name: its kubelet's identity is system:node:<name>.
const nodeName = "e2e-node"

var clients = []clientIdentity{
	{"kubeconfig", "kubernetes-admin", []string{"system:masters"}, ""},
	{"controller-manager.kubeconfig", "system:kube-controller-manager", nil, ""},
	{"scheduler.kubeconfig", "system:kube-scheduler", nil, ""},
	{"kubelet.kubeconfig", "system:node:" + nodeName, []string{"system:nodes"}, ""},
	{"kube-proxy.kubeconfig", "system:kube-proxy", nil, ""},
	// The API server's client certificate for kubelet (logs, exec).
	{"apiserver-kubelet-client.kubeconfig", "kube-apiserver-kubelet-client", []string{"system:masters"}, "apiserver-kubelet-client"},
}

// runPKI writes the cluster's certificates, keys and kubeconfigs to --dir:
// a CA, the API server's serving certificate (for loopback, the
// `kubernetes` Service and every --ip), the ServiceAccount signing key, and
// a client certificate with a kubeconfig per client.
func runPKI(args []string) int {
	flags := flag.NewFlagSet("pki", flag.ContinueOnError)
	dir := flags.String("dir", "", "output directory")
	server := flags.String("server", "", "the API server's URL, for the kubeconfigs")
	var ips []net.IP
	flags.Func("ip", "another address the API server's certificate names (repeatable)", func(value string) error {
		ip := net.ParseIP(value)
		if ip == nil {
			return fmt.Errorf("not an IP address: %q", value)
		}
		ips = append(ips, ip)
		return nil
	})
	if err := flags.Parse(args); err != nil {
		return 2
	}
	if *dir == "" || *server == "" {
		fmt.Fprintln(os.Stderr, "pki: --dir and --server are required")
		return 2
	}
	if err := writePKI(*dir, *server, ips); err != nil {
		fmt.Fprintf(os.Stderr, "pki: %v\n", err)
		return 1
	}
	return 0
}

func writePKI(dir, server string, ips []net.IP) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	caKey, caCert, err := newCA()
	if err != nil {
		return err
	}
	if err := writeCert(dir, "ca", caCert, caKey); err != nil {
		return err
	}
	serving := &x509.Certificate{
		Subject:     pkix.Name{CommonName: "kube-apiserver"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames: []string{
			"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
			"kubernetes.default.svc.cluster.local",
		},
		IPAddresses: append([]net.IP{net.ParseIP("127.0.0.1"), net.ParseIP(kubernetesServiceIP)}, ips...),
	}
	servingKey, servingDER, err := issue(serving, caCert, caKey)
	if err != nil {
		return err
	}
	if err := writeCert(dir, "apiserver", servingDER, servingKey); err != nil {
		return err
	}
	saKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	if err := writeKey(filepath.Join(dir, "sa.key"), saKey); err != nil {
		return err
	}
	public, err := x509.MarshalPKIXPublicKey(&saKey.PublicKey)
	if err != nil {
		return err
	}
	if err := writePEM(filepath.Join(dir, "sa.pub"), "PUBLIC KEY", public, 0o644); err != nil {
		return err
	}
	for _, client := range clients {
		template := &x509.Certificate{
			Subject:     pkix.Name{CommonName: client.user, Organization: client.groups},
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		}
		key, der, err := issue(template, caCert, caKey)
		if err != nil {
			return err
		}
		if err := writeKubeconfig(filepath.Join(dir, client.file), server, caCert, der, key); err != nil {
			return err
		}
		if client.certs != "" {
			if err := writeCert(dir, client.certs, der, key); err != nil {
				return err
			}
		}
	}
	return nil
}

func newCA() (*ecdsa.PrivateKey, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	template := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "connectors e2e CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, template, template, &key.PublicKey, key)
	return key, der, err
}

func issue(template *x509.Certificate, caDER []byte, caKey *ecdsa.PrivateKey) (*ecdsa.PrivateKey, []byte, error) {
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	template.SerialNumber = serial()
	template.NotBefore = time.Now().Add(-time.Hour)
	template.NotAfter = time.Now().Add(validity)
	template.KeyUsage = x509.KeyUsageDigitalSignature
	der, err := x509.CreateCertificate(rand.Reader, template, ca, &key.PublicKey, caKey)
	return key, der, err
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	return n
}

func writeCert(dir, stem string, der []byte, key *ecdsa.PrivateKey) error {
	if err := writePEM(filepath.Join(dir, stem+".crt"), "CERTIFICATE", der, 0o644); err != nil {
		return err
	}
	return writeKey(filepath.Join(dir, stem+".key"), key)
}

func writeKey(path string, key *ecdsa.PrivateKey) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	return writePEM(path, "PRIVATE KEY", der, 0o600)
}

func writePEM(path, kind string, der []byte, mode os.FileMode) error {
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}), mode)
}

func pemOf(kind string, der []byte) string {
	return base64.StdEncoding.EncodeToString(pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}))
}

func writeKubeconfig(path, server string, caDER, certDER []byte, key *ecdsa.PrivateKey) error {
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	config := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster:
    server: %s
    certificate-authority-data: %s
users:
- name: e2e
  user:
    client-certificate-data: %s
    client-key-data: %s
contexts:
- name: e2e
  context: {cluster: e2e, user: e2e}
current-context: e2e
`, server, pemOf("CERTIFICATE", caDER), pemOf("CERTIFICATE", certDER), pemOf("PRIVATE KEY", keyDER))
	return os.WriteFile(path, []byte(config), 0o600)
}
