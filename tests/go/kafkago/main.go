// kafkago drives segmentio/kafka-go (Debian's golang-github-segmentio-kafka-go-dev, 0.2.x:
// Produce v2 with message format v1, Fetch v2, ListOffsets v1, groups v0-v2) against a broker:
// a Writer per codec, a Reader with a GroupID, and a Conn. Each step prints "ok <step>"; the
// first failure prints "FAIL <step>: <error>" and exits 1. Used by tests/server/test_go_clients.py.
//
//	kafkago <broker host:port> <topic prefix>
package main

import (
	"context"
	"fmt"
	"os"
	"time"

	kafka "github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/gzip"
	"github.com/segmentio/kafka-go/lz4"
	"github.com/segmentio/kafka-go/snappy"
)

const perCodec = 20

func fail(step string, err error) {
	fmt.Printf("FAIL %s: %v\n", step, err)
	os.Exit(1)
}

func main() {
	broker, prefix := os.Args[1], os.Args[2]
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	codecs := []struct {
		name  string
		codec kafka.CompressionCodec
	}{{"none", nil}, {"gzip", gzip.NewCompressionCodec()}, {"snappy", snappy.NewCompressionCodec()},
		{"lz4", lz4.NewCompressionCodec()}}
	topic := prefix + "-writer"
	want := map[string]bool{}
	for _, c := range codecs {
		w := kafka.NewWriter(kafka.WriterConfig{Brokers: []string{broker}, Topic: topic,
			CompressionCodec: c.codec, BatchTimeout: 10 * time.Millisecond, RequiredAcks: -1})
		var msgs []kafka.Message
		for i := 0; i < perCodec; i++ {
			v := fmt.Sprintf("%s-%d", c.name, i)
			want[v] = true
			msgs = append(msgs, kafka.Message{Key: []byte(fmt.Sprintf("k%d", i)), Value: []byte(v)})
		}
		if err := w.WriteMessages(ctx, msgs...); err != nil {
			fail("writer "+c.name, err)
		}
		if err := w.Close(); err != nil {
			fail("writer close "+c.name, err)
		}
		fmt.Println("ok writer", c.name)
	}

	// A Reader in a consumer group reads every message once and commits.
	r := kafka.NewReader(kafka.ReaderConfig{Brokers: []string{broker}, GroupID: prefix + "-group",
		Topic: topic, MinBytes: 1, MaxBytes: 1 << 20, MaxWait: 100 * time.Millisecond,
		HeartbeatInterval: time.Second, SessionTimeout: 10 * time.Second})
	seen := map[string]bool{}
	for len(seen) < len(want) {
		m, err := r.ReadMessage(ctx)
		if err != nil {
			fail("reader with group", err)
		}
		if !want[string(m.Value)] {
			fail("reader with group", fmt.Errorf("unexpected value %q at offset %d", m.Value, m.Offset))
		}
		if seen[string(m.Value)] {
			fail("reader with group", fmt.Errorf("value %q read twice", m.Value))
		}
		seen[string(m.Value)] = true
	}
	if err := r.Close(); err != nil {
		fail("reader close", err)
	}
	fmt.Println("ok reader group", len(seen))

	// Conn: produce, then read back from the first offset, offsets included.
	conn, err := kafka.DialLeader(ctx, "tcp", broker, prefix+"-conn", 0)
	if err != nil {
		fail("conn dial", err)
	}
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := conn.WriteMessages(kafka.Message{Value: []byte("c0")}, kafka.Message{Value: []byte("c1")},
		kafka.Message{Key: []byte("k"), Value: []byte("c2")}); err != nil {
		fail("conn write", err)
	}
	last, err := conn.ReadLastOffset()
	if err != nil || last != 3 {
		fail("conn last offset", fmt.Errorf("%d %v", last, err))
	}
	if _, err := conn.Seek(1, kafka.SeekAbsolute); err != nil {
		fail("conn seek", err)
	}
	for i := 1; i < 3; i++ {
		m, err := conn.ReadMessage(1 << 20)
		if err != nil {
			fail("conn read", err)
		}
		if m.Offset != int64(i) || string(m.Value) != fmt.Sprintf("c%d", i) {
			fail("conn read", fmt.Errorf("offset %d value %q, want %d c%d", m.Offset, m.Value, i, i))
		}
	}
	conn.Close()
	fmt.Println("ok conn")
}
