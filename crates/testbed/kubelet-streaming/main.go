// kubelet-streaming serves the streaming part of the kubelet API on a testbed node, with the
// kubelet's own server code (k8s.io/kubelet/pkg/cri/streaming), so the apiserver proxies
// `kubectl exec`, `kubectl port-forward` and `kubectl logs` to it as to a kubelet:
//
//	/exec/{namespace}/{pod}[/{uid}]/{container}?command=...   SPDY or WebSocket, as kubelet
//	/portForward/{namespace}/{pod}[/{uid}]                    SPDY or WebSocket, as kubelet
//	/containerLogs/{namespace}/{pod}/{container}              proxied to the node agent
//
// The node agent (ambit-testbed agent, Rust) runs the pods; this program asks it where a pod
// lives over the agent's unix socket (GET /pods/{namespace}/{pod}: uid, netns, container pids)
// and enters the container the way a runtime's exec does: nsenter into the container process's
// mount, UTS and network namespaces, with its environment, working directory and user.
//
// Only clients with a certificate from the testbed CA whose CommonName is the apiserver's
// kubelet client name get in: the apiserver is this endpoint's one caller.
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/creack/pty"
	"golang.org/x/sys/unix"
	"k8s.io/apimachinery/pkg/types"
	remotecommandconsts "k8s.io/apimachinery/pkg/util/remotecommand"
	"k8s.io/client-go/tools/remotecommand"
	"k8s.io/kubelet/pkg/cri/streaming/portforward"
	remotecommandserver "k8s.io/kubelet/pkg/cri/streaming/remotecommand"
	utilexec "k8s.io/utils/exec"
)

// The kubelet's defaults (k8s.io/kubelet/pkg/cri/streaming.DefaultConfig).
const (
	streamIdleTimeout     = 4 * time.Hour
	streamCreationTimeout = remotecommandconsts.DefaultStreamCreationTimeout
)

// podInfo is the node agent's answer to GET /pods/{namespace}/{pod}.
type podInfo struct {
	UID string `json:"uid"`
	// The pod's netns path; empty for a host-network pod (which lives in the node's netns,
	// where this program runs).
	Netns string `json:"netns"`
	// Running containers by name: the pid of the container's process.
	Containers map[string]int `json:"containers"`
}

type server struct {
	agent    *http.Client
	clientCN string
}

func main() {
	listen := flag.String("listen", "", "address:port to serve on (the node IP, port 10250)")
	certFile := flag.String("tls-cert", "", "serving certificate (PEM), signed by the testbed CA")
	keyFile := flag.String("tls-key", "", "serving key (PEM)")
	caFile := flag.String("client-ca", "", "CA that signs client certificates (PEM)")
	clientCN := flag.String("client-cn", "", "CommonName a client certificate must carry")
	socket := flag.String("agent-socket", "", "the node agent's unix socket")
	flag.Parse()
	if *listen == "" || *certFile == "" || *keyFile == "" || *caFile == "" || *clientCN == "" || *socket == "" {
		log.Fatal("kubelet-streaming: --listen, --tls-cert, --tls-key, --client-ca, --client-cn and --agent-socket are required")
	}
	caPEM, err := os.ReadFile(*caFile)
	if err != nil {
		log.Fatalf("kubelet-streaming: %v", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		log.Fatalf("kubelet-streaming: no certificate in %s", *caFile)
	}
	cert, err := tls.LoadX509KeyPair(*certFile, *keyFile)
	if err != nil {
		log.Fatalf("kubelet-streaming: %v", err)
	}
	agentTransport := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", *socket)
		},
	}
	s := &server{agent: &http.Client{Transport: agentTransport, Timeout: 10 * time.Second}, clientCN: *clientCN}
	logs := &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.Out.URL.Scheme = "http"
			r.Out.URL.Host = "agent"
		},
		Transport:     agentTransport,
		FlushInterval: -1, // `kubectl logs -f` streams
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/exec/{namespace}/{pod}/{container}", s.exec)
	mux.HandleFunc("/exec/{namespace}/{pod}/{uid}/{container}", s.exec)
	mux.HandleFunc("/portForward/{namespace}/{pod}", s.portForward)
	mux.HandleFunc("/portForward/{namespace}/{pod}/{uid}", s.portForward)
	mux.Handle("/containerLogs/", logs)
	httpServer := &http.Server{
		Addr:              *listen,
		Handler:           s.authenticated(mux),
		ReadHeaderTimeout: 10 * time.Second,
		TLSConfig: &tls.Config{
			Certificates: []tls.Certificate{cert},
			ClientAuth:   tls.RequireAndVerifyClientCert,
			ClientCAs:    pool,
			MinVersion:   tls.VersionTLS12,
			// SPDY upgrades need HTTP/1.1, as on a kubelet.
			NextProtos: []string{"http/1.1"},
		},
	}
	log.Printf("kubelet-streaming: serving exec, portForward and containerLogs on %s", *listen)
	log.Fatal(httpServer.ListenAndServeTLS("", ""))
}

// authenticated lets through only the apiserver's kubelet client certificate (the TLS layer
// already checked it chains to the testbed CA).
func (s *server) authenticated(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 || r.TLS.PeerCertificates[0].Subject.CommonName != s.clientCN {
			http.Error(w, "forbidden: only the apiserver's kubelet client may call this node", http.StatusForbidden)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// pod asks the node agent about a pod; a uid in the request path must match, as on a kubelet.
func (s *server) pod(ctx context.Context, w http.ResponseWriter, r *http.Request) (*podInfo, bool) {
	ns, name := r.PathValue("namespace"), r.PathValue("pod")
	u := "http://agent/pods/" + url.PathEscape(ns) + "/" + url.PathEscape(name)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return nil, false
	}
	resp, err := s.agent.Do(req)
	if err != nil {
		http.Error(w, "node agent: "+err.Error(), http.StatusServiceUnavailable)
		return nil, false
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusNotFound {
		http.Error(w, fmt.Sprintf("pod %s/%s does not exist on this node", ns, name), http.StatusNotFound)
		return nil, false
	}
	var info podInfo
	if resp.StatusCode != http.StatusOK {
		http.Error(w, "node agent: "+resp.Status, http.StatusBadGateway)
		return nil, false
	}
	if err := json.NewDecoder(resp.Body).Decode(&info); err != nil {
		http.Error(w, "node agent: "+err.Error(), http.StatusBadGateway)
		return nil, false
	}
	if uid := r.PathValue("uid"); uid != "" && uid != info.UID {
		http.Error(w, "pod not found", http.StatusNotFound)
		return nil, false
	}
	return &info, true
}

func (s *server) exec(w http.ResponseWriter, r *http.Request) {
	opts, err := remotecommandserver.NewOptions(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	info, ok := s.pod(r.Context(), w, r)
	if !ok {
		return
	}
	container := r.PathValue("container")
	pid, ok := info.Containers[container]
	if !ok {
		http.Error(w, fmt.Sprintf("container %s is not running", container), http.StatusNotFound)
		return
	}
	remotecommandserver.ServeExec(w, r, containerExec{pid: pid}, r.PathValue("pod"), types.UID(info.UID), container,
		r.URL.Query()["command"], opts, streamIdleTimeout, streamCreationTimeout, remotecommandconsts.SupportedStreamingProtocols)
}

func (s *server) portForward(w http.ResponseWriter, r *http.Request) {
	opts, err := portforward.NewV4Options(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	info, ok := s.pod(r.Context(), w, r)
	if !ok {
		return
	}
	portforward.ServePortForward(w, r, netnsForwarder{netns: info.Netns}, r.PathValue("pod"), types.UID(info.UID),
		opts, streamIdleTimeout, streamCreationTimeout, portforward.SupportedProtocols)
}

// containerExec runs a command as the container's process runs: in its mount, UTS and network
// namespaces, with its environment (so its PATH finds the image's binaries), working directory,
// user and group.
type containerExec struct{ pid int }

func (c containerExec) ExecInContainer(ctx context.Context, _ string, _ types.UID, _ string, cmd []string, in io.Reader, out, errOut io.WriteCloser, tty bool, resize <-chan remotecommand.TerminalSize, _ time.Duration) error {
	if len(cmd) == 0 {
		return errors.New("no command")
	}
	env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", c.pid))
	if err != nil {
		return fmt.Errorf("container process %d: %w", c.pid, err)
	}
	uid, gid, err := ids(c.pid)
	if err != nil {
		return err
	}
	args := []string{
		fmt.Sprintf("--target=%d", c.pid), "--mount", "--uts", "--net", "--wd",
		"--setuid=" + uid, "--setgid=" + gid, "--",
	}
	command := exec.CommandContext(ctx, "nsenter", append(args, cmd...)...)
	command.Env = strings.Split(strings.TrimRight(string(env), "\x00"), "\x00")
	if tty {
		return runTTY(command, in, out, resize)
	}
	if in != nil {
		command.Stdin = in
	}
	command.Stdout = out
	command.Stderr = errOut
	return exitCode(command.Run())
}

// runTTY runs the command on a pseudo-terminal, following the client's terminal size.
func runTTY(command *exec.Cmd, in io.Reader, out io.WriteCloser, resize <-chan remotecommand.TerminalSize) error {
	term, err := pty.Start(command)
	if err != nil {
		return err
	}
	defer term.Close()
	go func() {
		for size := range resize {
			_ = pty.Setsize(term, &pty.Winsize{Rows: size.Height, Cols: size.Width})
		}
	}()
	if in != nil {
		go func() { _, _ = io.Copy(term, in) }()
	}
	// The pty reports EIO once the command has exited and its output is drained.
	_, _ = io.Copy(out, term)
	return exitCode(command.Wait())
}

// exitCode turns a command's non-zero exit into the error the streaming server reports as
// the exit code (`kubectl exec` exits with it).
func exitCode(err error) error {
	var exitErr *exec.ExitError
	if errors.As(err, &exitErr) {
		code := exitErr.ExitCode()
		if ws, ok := exitErr.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			code = 128 + int(ws.Signal())
		}
		return utilexec.CodeExitError{Err: err, Code: code}
	}
	return err
}

// ids reads the effective uid and gid of a process.
func ids(pid int) (string, string, error) {
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return "", "", fmt.Errorf("container process %d: %w", pid, err)
	}
	var uid, gid string
	sc := bufio.NewScanner(bytes.NewReader(status))
	for sc.Scan() {
		// "Uid:	real	effective	saved	fs"
		fields := strings.Fields(sc.Text())
		if len(fields) >= 3 && fields[0] == "Uid:" {
			uid = fields[2]
		}
		if len(fields) >= 3 && fields[0] == "Gid:" {
			gid = fields[2]
		}
	}
	if uid == "" || gid == "" {
		return "", "", fmt.Errorf("container process %d: no Uid/Gid in /proc status", pid)
	}
	return uid, gid, nil
}

// netnsForwarder dials the port on localhost inside the pod's netns, as containerd's
// port-forward does (IPv4: the testbed is IPv4 only).
type netnsForwarder struct{ netns string }

func (f netnsForwarder) PortForward(ctx context.Context, _ string, _ types.UID, port int32, stream io.ReadWriteCloser) error {
	defer stream.Close()
	// A literal address: a name with IPv4 and IPv6 answers would be dialed from racing
	// goroutines, on threads outside the pod's netns.
	conn, err := dialInNetns(ctx, f.netns, "127.0.0.1:"+strconv.Itoa(int(port)))
	if err != nil {
		return fmt.Errorf("port %d in the pod: %w", port, err)
	}
	defer conn.Close()
	go func() {
		if _, err := io.Copy(conn, stream); err != nil {
			// The client's side broke: nothing more goes either way.
			conn.Close()
			return
		}
		// The client is done sending: tell the app, keep forwarding its answer.
		if tcp, ok := conn.(*net.TCPConn); ok {
			_ = tcp.CloseWrite()
		}
	}()
	// The app closing its side ends the forward; closing the stream tells the client.
	done := make(chan error, 1)
	go func() {
		_, err := io.Copy(stream, conn)
		done <- err
	}()
	select {
	case err = <-done:
	case <-ctx.Done():
		err = ctx.Err()
	}
	return err
}

// dialInNetns opens the socket inside netns (empty: this process's own, the node's) from a
// thread that enters it and comes back: a socket stays in the netns it was made in.
func dialInNetns(ctx context.Context, netns, addr string) (net.Conn, error) {
	var d net.Dialer
	if netns == "" {
		return d.DialContext(ctx, "tcp", addr)
	}
	type result struct {
		conn net.Conn
		err  error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		// The thread is unlocked (returned to the pool) only once it is back in the node's
		// netns; a thread that could not get back dies with this goroutine.
		origin, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{err: err}
			return
		}
		defer origin.Close()
		target, err := os.Open(netns)
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{err: err}
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			ch <- result{err: fmt.Errorf("setns %s: %w", netns, err)}
			return
		}
		conn, err := d.DialContext(ctx, "tcp", addr)
		if unix.Setns(int(origin.Fd()), unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		ch <- result{conn, err}
	}()
	r := <-ch
	return r.conn, r.err
}
