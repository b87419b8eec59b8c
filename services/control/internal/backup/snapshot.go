package backup

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
)

// The JetStream API of stream snapshots (nats.go has no helper for it; the
// nats CLI uses the same requests through jsm.go).
const (
	snapshotAPI = "$JS.API.STREAM.SNAPSHOT."
	restoreAPI  = "$JS.API.STREAM.RESTORE."
	infoAPI     = "$JS.API.STREAM.INFO."
	// errStreamNotFound is the JetStream error code of a missing stream.
	errStreamNotFound = 10059
)

// Names of a stream's files, as the nats CLI writes them.
const (
	metaFile = "backup.json"
	// arcFile is the archive of servers from 2.15 on, tarFile of older ones.
	arcFile = "stream.arc.s2"
	tarFile = "stream.tar.s2"
)

// Sizes and bounds of the snapshot transfer.
const (
	snapshotChunk = 128 * 1024
	restoreChunk  = 64 * 1024
	// apiTimeout bounds one JetStream API request and the wait for one
	// snapshot chunk.
	apiTimeout = 30 * time.Second
	// finishTimeout bounds the server's work after the last restore chunk.
	finishTimeout = 10 * time.Minute
)

// apiError is the error of a JetStream API response.
type apiError struct {
	Code        int    `json:"code"`
	ErrCode     int    `json:"err_code"`
	Description string `json:"description"`
}

func (e *apiError) Error() string {
	return fmt.Sprintf("%s (code %d, error %d)", e.Description, e.Code, e.ErrCode)
}

// snapshotRequest is the body of a stream snapshot request (the part of
// JetStream's JSApiStreamSnapshotRequest a backup sets): the server sends
// the snapshot's chunks to DeliverSubject.
type snapshotRequest struct {
	DeliverSubject string `json:"deliver_subject"`
	ChunkSize      int    `json:"chunk_size"`
}

// streamState is the part of a JetStream stream state a backup reports.
type streamState struct {
	Messages  uint64 `json:"messages"`
	Bytes     uint64 `json:"bytes"`
	FirstSeq  uint64 `json:"first_seq"`
	LastSeq   uint64 `json:"last_seq"`
	Consumers int    `json:"consumer_count"`
}

// meta is backup.json: the configuration and state the snapshot response
// carried, kept as the server wrote them.
type meta struct {
	Config json.RawMessage `json:"config"`
	State  json.RawMessage `json:"state"`
}

// request sends a JetStream API request and decodes its response into v,
// returning the response's error, if any, as *apiError.
func request(ctx context.Context, nc *nats.Conn, subject string, body any, v any) error {
	b, err := json.Marshal(body)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, apiTimeout)
	defer cancel()
	msg, err := nc.RequestWithContext(ctx, subject, b)
	if err != nil {
		return fmt.Errorf("%w: %s: %w", ErrNATS, subject, err)
	}
	return decodeResponse(subject, msg.Data, v)
}

// decodeResponse decodes a JetStream API response into v.
func decodeResponse(subject string, data []byte, v any) error {
	var head struct {
		Error *apiError `json:"error"`
	}
	if err := json.Unmarshal(data, &head); err != nil {
		return fmt.Errorf("%w: %s: response %q: %w", ErrNATS, subject, data, err)
	}
	if head.Error != nil {
		return head.Error
	}
	if v == nil {
		return nil
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("%w: %s: response %q: %w", ErrNATS, subject, data, err)
	}
	return nil
}

// isNotFound reports a JetStream "stream not found" error.
func isNotFound(err error) bool {
	var ae *apiError
	return errors.As(err, &ae) && ae.ErrCode == errStreamNotFound
}

// snapshotStream writes a snapshot of stream, with its consumers, into dir
// in the nats CLI's layout. A stream the server does not have is Absent.
func snapshotStream(ctx context.Context, nc *nats.Conn, stream, dir string) (StreamEntry, error) {
	entry := StreamEntry{Name: stream}
	inbox := nc.NewRespInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		return entry, fmt.Errorf("%w: snapshot %s: %w", ErrNATS, stream, err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := sub.SetPendingLimits(-1, -1); err != nil {
		return entry, err
	}
	var resp meta
	err = request(ctx, nc, snapshotAPI+stream, snapshotRequest{DeliverSubject: inbox, ChunkSize: snapshotChunk}, &resp)
	if isNotFound(err) {
		entry.Absent = true
		return entry, nil
	}
	if err != nil {
		return entry, fmt.Errorf("%w: snapshot %s: %w", ErrNATS, stream, err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return entry, err
	}
	archive := filepath.Join(dir, archiveName(nc.ConnectedServerVersion()))
	size, err := receiveSnapshot(ctx, sub, archive)
	if err != nil {
		return entry, fmt.Errorf("%w: snapshot %s: %w", ErrNATS, stream, err)
	}
	if err := writeJSON(filepath.Join(dir, metaFile), resp); err != nil {
		return entry, err
	}
	var st streamState
	if err := json.Unmarshal(resp.State, &st); err != nil {
		return entry, fmt.Errorf("%w: snapshot %s: state: %w", ErrNATS, stream, err)
	}
	entry.Dir = filepath.Join(NATSDir, stream)
	entry.Messages, entry.Bytes, entry.FirstSeq, entry.LastSeq, entry.Consumers = st.Messages, st.Bytes, st.FirstSeq, st.LastSeq, st.Consumers
	entry.Archive = size
	return entry, nil
}

// receiveSnapshot writes the chunks arriving on sub into path until the
// server's end marker (an empty message with status 204; another status
// is the server's error), answering each chunk's flow-control reply.
func receiveSnapshot(ctx context.Context, sub *nats.Subscription, path string) (int64, error) {
	f, err := os.Create(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	w := bufio.NewWriterSize(f, 1<<20)
	var size int64
	for {
		wait, cancel := context.WithTimeout(ctx, apiTimeout)
		msg, err := sub.NextMsgWithContext(wait)
		cancel()
		if err != nil {
			return size, fmt.Errorf("waiting for the next chunk after %d bytes: %w", size, err)
		}
		if len(msg.Data) == 0 {
			if status := msg.Header.Get("Status"); status != "" && status != "204" {
				return size, fmt.Errorf("server ended the snapshot: %s %s", status, msg.Header.Get("Description"))
			}
			if err := w.Flush(); err != nil {
				return size, err
			}
			return size, f.Sync()
		}
		if msg.Reply != "" {
			// The server waits for these before sending more.
			if err := msg.Respond(nil); err != nil {
				return size, err
			}
		}
		n, err := w.Write(msg.Data)
		size += int64(n)
		if err != nil {
			return size, err
		}
	}
}

// archiveName is the snapshot file name for a server version: servers
// from 2.15 on send the NATSARC1 format, older ones a tar.
func archiveName(version string) string {
	parts := strings.SplitN(version, ".", 3)
	if len(parts) >= 2 {
		major, _ := strconv.Atoi(parts[0])
		minor, _ := strconv.Atoi(parts[1])
		if major > 2 || major == 2 && minor >= 15 {
			return arcFile
		}
	}
	return tarFile
}

// restorePlan is one stream checked for restoring.
type restorePlan struct {
	name    string
	request []byte // the restore request: configuration and state
	archive string
}

// planRestore checks the stream directory dir (the nats CLI's layout) and
// that the server does not have the stream yet, and prepares its restore
// request, with replicas replacing the configured replica count when
// positive.
func planRestore(ctx context.Context, nc *nats.Conn, dir, stream string, replicas int) (restorePlan, error) {
	p := restorePlan{name: stream}
	b, err := os.ReadFile(filepath.Join(dir, metaFile))
	if err != nil {
		return p, fmt.Errorf("%w: stream %s: %w", ErrInvalid, stream, err)
	}
	var m struct {
		Config map[string]any  `json:"config"`
		State  json.RawMessage `json:"state"`
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return p, fmt.Errorf("%w: %s: %w", ErrInvalid, filepath.Join(dir, metaFile), err)
	}
	if name, _ := m.Config["name"].(string); name != stream {
		return p, fmt.Errorf("%w: %s holds stream %q, not %s", ErrInvalid, filepath.Join(dir, metaFile), name, stream)
	}
	if replicas > 0 {
		m.Config["num_replicas"] = replicas
	}
	if p.request, err = json.Marshal(m); err != nil {
		return p, err
	}
	if p.archive, err = archivePath(dir); err != nil {
		return p, err
	}
	var info streamState
	err = request(ctx, nc, infoAPI+stream, struct{}{}, &struct {
		State *streamState `json:"state"`
	}{&info})
	switch {
	case err == nil:
		return p, fmt.Errorf("%w: stream %s is already on the server (%d messages): restore into a server without vigil's streams (before the services first start), or remove it (nats stream rm %s)", ErrExists, stream, info.Messages, stream)
	case !isNotFound(err):
		return p, fmt.Errorf("%w: stream %s: %w", ErrNATS, stream, err)
	}
	return p, nil
}

// archivePath is the snapshot file of a stream directory.
func archivePath(dir string) (string, error) {
	var found []string
	for _, name := range []string{arcFile, tarFile} {
		if _, err := os.Stat(filepath.Join(dir, name)); err == nil {
			found = append(found, filepath.Join(dir, name))
		}
	}
	switch len(found) {
	case 1:
		return found[0], nil
	case 0:
		return "", fmt.Errorf("%w: %s holds neither %s nor %s", ErrInvalid, dir, arcFile, tarFile)
	}
	return "", fmt.Errorf("%w: %s holds both %s and %s", ErrInvalid, dir, arcFile, tarFile)
}

// restoreStream sends the snapshot of p to the server and returns the
// restored stream's message count.
func restoreStream(ctx context.Context, nc *nats.Conn, p restorePlan) (uint64, error) {
	var resp struct {
		DeliverSubject string `json:"deliver_subject"`
	}
	if err := request(ctx, nc, restoreAPI+p.name, json.RawMessage(p.request), &resp); err != nil {
		return 0, fmt.Errorf("%w: restore %s: %w", ErrNATS, p.name, err)
	}
	f, err := os.Open(p.archive)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	chunk := make([]byte, min(restoreChunk, int(nc.MaxPayload())))
	for {
		n, err := io.ReadFull(f, chunk)
		if n > 0 {
			if err := sendChunk(ctx, nc, resp.DeliverSubject, chunk[:n], apiTimeout); err != nil {
				return 0, fmt.Errorf("%w: restore %s: %w", ErrNATS, p.name, err)
			}
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			break
		}
		if err != nil {
			return 0, err
		}
	}
	// The empty chunk ends the upload; the server answers once the stream
	// is restored, with the stream's info.
	ctx, cancel := context.WithTimeout(ctx, finishTimeout)
	defer cancel()
	msg, err := nc.RequestWithContext(ctx, resp.DeliverSubject, nil)
	if err != nil {
		return 0, fmt.Errorf("%w: restore %s: finish: %w", ErrNATS, p.name, err)
	}
	var created struct {
		State streamState `json:"state"`
	}
	if err := decodeResponse(restoreAPI+p.name, msg.Data, &created); err != nil {
		return 0, fmt.Errorf("%w: restore %s: %w", ErrNATS, p.name, err)
	}
	return created.State.Messages, nil
}

// sendChunk sends one chunk of a restore and checks the server's answer.
// In a cluster the server that receives the chunks may subscribe after it
// answered the restore request, and its interest reach the server this
// client is connected to later still: a chunk nobody received (no
// responders) is sent again until timeout.
func sendChunk(ctx context.Context, nc *nats.Conn, subject string, data []byte, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	msg, err := nc.RequestWithContext(ctx, subject, data)
	for errors.Is(err, nats.ErrNoResponders) {
		select {
		case <-ctx.Done():
			return err
		case <-time.After(100 * time.Millisecond):
		}
		msg, err = nc.RequestWithContext(ctx, subject, data)
	}
	if err != nil {
		return err
	}
	if len(msg.Data) == 0 {
		return nil
	}
	return decodeResponse(subject, msg.Data, nil)
}
