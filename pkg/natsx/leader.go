package natsx

// This file: reads from a stream's leader. A direct get (what jetstream's
// KeyValue.Get and Stream.GetLastMsgForSubject send when the stream allows
// direct gets, as every KV bucket does) is answered by any replica, and a
// replica may lag the write just acknowledged: on a loaded 3-server
// cluster 81 of 3000 reads right after a write returned the previous
// revision (docs/design.md, "Reads that decide a write come from the
// leader"). A read that decides a compare-and-set, or decides that
// nothing needs writing, asks the leader ($JS.API.STREAM.MSG.GET, which
// only the leader answers) instead.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// LastMsg is the last message of a subject as the stream's leader holds it.
type LastMsg struct {
	Sequence uint64
	Header   nats.Header
	Data     []byte
	Time     time.Time
}

// LastFromLeader asks stream's leader for the last message on subject;
// jetstream.ErrMsgNotFound when the stream holds none. Like js's own
// requests, it waits js's default timeout when ctx has no deadline.
func LastFromLeader(ctx context.Context, js jetstream.JetStream, stream, subject string) (LastMsg, error) {
	req, err := json.Marshal(map[string]string{"last_by_subj": subject})
	if err != nil {
		return LastMsg{}, err
	}
	opts := js.Options()
	if _, ok := ctx.Deadline(); !ok && opts.DefaultTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, opts.DefaultTimeout)
		defer cancel()
	}
	reply, err := js.Conn().RequestWithContext(ctx, apiPrefix(opts)+"STREAM.MSG.GET."+stream, req)
	if err != nil {
		return LastMsg{}, fmt.Errorf("stream %s: last message on %s: %w", stream, subject, err)
	}
	var resp struct {
		Error *struct {
			ErrCode     jetstream.ErrorCode `json:"err_code"`
			Description string              `json:"description"`
		} `json:"error"`
		Message *struct {
			Sequence uint64    `json:"seq"`
			Header   []byte    `json:"hdrs"`
			Data     []byte    `json:"data"`
			Time     time.Time `json:"time"`
		} `json:"message"`
	}
	if err := json.Unmarshal(reply.Data, &resp); err != nil {
		return LastMsg{}, fmt.Errorf("stream %s: last message on %s: %w", stream, subject, err)
	}
	switch {
	case resp.Error != nil && resp.Error.ErrCode == jetstream.JSErrCodeMessageNotFound:
		return LastMsg{}, jetstream.ErrMsgNotFound
	case resp.Error != nil:
		return LastMsg{}, fmt.Errorf("stream %s: last message on %s: %s", stream, subject, resp.Error.Description)
	case resp.Message == nil:
		return LastMsg{}, fmt.Errorf("stream %s: last message on %s: an answer without a message", stream, subject)
	}
	m := LastMsg{Sequence: resp.Message.Sequence, Data: resp.Message.Data, Time: resp.Message.Time}
	if len(resp.Message.Header) > 0 {
		if m.Header, err = nats.DecodeHeadersMsg(resp.Message.Header); err != nil {
			return LastMsg{}, fmt.Errorf("stream %s: last message on %s: %w", stream, subject, err)
		}
	}
	return m, nil
}

// apiPrefix is the JetStream API prefix js sends its requests to, with
// its trailing dot.
func apiPrefix(opts jetstream.JetStreamOptions) string {
	prefix := opts.APIPrefix
	switch {
	case opts.Domain != "":
		prefix = "$JS." + opts.Domain + ".API"
	case prefix == "":
		prefix = jetstream.DefaultAPIPrefix
	}
	if !strings.HasSuffix(prefix, ".") {
		prefix += "."
	}
	return prefix
}

// KVGet reads key of bucket from its stream's leader, as kv.Get would
// read it but never from a replica that lags: jetstream.ErrKeyNotFound
// when the key was never written, or deleted or purged last.
func KVGet(ctx context.Context, js jetstream.JetStream, bucket, key string) (jetstream.KeyValueEntry, error) {
	m, err := LastFromLeader(ctx, js, "KV_"+bucket, "$KV."+bucket+"."+key)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, jetstream.ErrKeyNotFound
	}
	if err != nil {
		return nil, err
	}
	if op := m.Header.Get("KV-Operation"); op == "DEL" || op == "PURGE" {
		return nil, jetstream.ErrKeyNotFound // the key's last entry is a deletion marker
	}
	return kvEntry{bucket: bucket, key: key, msg: m}, nil
}

// kvEntry is a KV entry read by KVGet.
type kvEntry struct {
	bucket, key string
	msg         LastMsg
}

func (e kvEntry) Bucket() string                  { return e.bucket }
func (e kvEntry) Key() string                     { return e.key }
func (e kvEntry) Value() []byte                   { return e.msg.Data }
func (e kvEntry) Revision() uint64                { return e.msg.Sequence }
func (e kvEntry) Created() time.Time              { return e.msg.Time }
func (e kvEntry) Delta() uint64                   { return 0 }
func (e kvEntry) Operation() jetstream.KeyValueOp { return jetstream.KeyValuePut }
