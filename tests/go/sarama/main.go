// sarama drives Shopify/sarama (Debian's golang-github-shopify-sarama-dev, 1.22: newest
// known Kafka version 2.2.0) against a broker under one Config.Version: a sync, an async and an
// idempotent producer, a consumer group of two members through a rebalance, and ClusterAdmin
// calls. Each step prints "ok <step>"; the first failure prints "FAIL <step>: <error>" and
// exits 1. Used by tests/server/test_go_clients.py.
//
//	sarama <broker host:port> <kafka version, e.g. 0.11.0.0 or "newest"> <topic prefix>
package main

import (
	"context"
	"fmt"
	"os"
	"sort"
	"sync"
	"time"

	"github.com/Shopify/sarama"
)

var broker []string

func fail(step string, err error) {
	fmt.Printf("FAIL %s: %v\n", step, err)
	os.Exit(1)
}

func config(version sarama.KafkaVersion) *sarama.Config {
	c := sarama.NewConfig()
	c.Version = version
	c.ClientID = "sarama-" + version.String()
	c.Producer.Return.Successes = true
	c.Producer.RequiredAcks = sarama.WaitForAll
	c.Consumer.Offsets.Initial = sarama.OffsetOldest
	c.Consumer.Return.Errors = true
	c.Metadata.Retry.Backoff = 50 * time.Millisecond
	return c
}

func produce(version sarama.KafkaVersion, topic string) {
	c := config(version)
	p, err := sarama.NewSyncProducer(broker, c)
	if err != nil {
		fail("sync producer", err)
	}
	for i := 0; i < 10; i++ {
		part, off, err := p.SendMessage(&sarama.ProducerMessage{Topic: topic,
			Key: sarama.StringEncoder(fmt.Sprintf("k%d", i)), Value: sarama.StringEncoder(fmt.Sprintf("sync-%d", i))})
		if err != nil {
			fail("sync producer", err)
		}
		if off < 0 || part < 0 {
			fail("sync producer", fmt.Errorf("partition %d offset %d", part, off))
		}
	}
	p.Close()
	fmt.Println("ok sync producer")

	a, err := sarama.NewAsyncProducer(broker, c)
	if err != nil {
		fail("async producer", err)
	}
	for i := 0; i < 10; i++ {
		a.Input() <- &sarama.ProducerMessage{Topic: topic, Key: sarama.StringEncoder(fmt.Sprintf("a%d", i)),
			Value: sarama.StringEncoder(fmt.Sprintf("async-%d", i))}
	}
	for i := 0; i < 10; i++ {
		select {
		case <-a.Successes():
		case e := <-a.Errors():
			fail("async producer", e.Err)
		case <-time.After(30 * time.Second):
			fail("async producer", fmt.Errorf("no acknowledgement after 30 s"))
		}
	}
	a.Close()
	fmt.Println("ok async producer")

	ic := config(version)
	ic.Producer.Idempotent = true
	ic.Net.MaxOpenRequests = 1
	ip, err := sarama.NewSyncProducer(broker, ic)
	if err != nil {
		fail("idempotent producer", err)
	}
	for i := 0; i < 10; i++ {
		if _, _, err := ip.SendMessage(&sarama.ProducerMessage{Topic: topic, Key: sarama.StringEncoder(fmt.Sprintf("i%d", i)),
			Value: sarama.StringEncoder(fmt.Sprintf("idem-%d", i))}); err != nil {
			fail("idempotent producer", err)
		}
	}
	ip.Close()
	fmt.Println("ok idempotent producer")
}

// member records what one consumer group member was given and read.
type member struct {
	mu     sync.Mutex
	claims [][]int32 // the partitions of each generation
	seen   map[string]bool
}

func (m *member) Setup(s sarama.ConsumerGroupSession) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	var parts []int32
	for _, ps := range s.Claims() {
		parts = append(parts, ps...)
	}
	sort.Slice(parts, func(i, j int) bool { return parts[i] < parts[j] })
	m.claims = append(m.claims, parts)
	return nil
}

func (m *member) Cleanup(sarama.ConsumerGroupSession) error { return nil }

func (m *member) ConsumeClaim(s sarama.ConsumerGroupSession, c sarama.ConsumerGroupClaim) error {
	for msg := range c.Messages() {
		m.mu.Lock()
		m.seen[string(msg.Value)] = true
		m.mu.Unlock()
		s.MarkMessage(msg, "")
	}
	return nil
}

func (m *member) state() ([][]int32, int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([][]int32(nil), m.claims...), len(m.seen)
}

func join(ctx context.Context, version sarama.KafkaVersion, group, topic string, m *member) sarama.ConsumerGroup {
	c := config(version)
	c.Consumer.Group.Heartbeat.Interval = 200 * time.Millisecond
	c.Consumer.Group.Session.Timeout = 6 * time.Second
	c.Consumer.Group.Rebalance.Timeout = 10 * time.Second
	c.Consumer.Offsets.CommitInterval = 100 * time.Millisecond
	g, err := sarama.NewConsumerGroup(broker, group, c)
	if err != nil {
		fail("consumer group", err)
	}
	go func() {
		for err := range g.Errors() {
			fmt.Println("consumer group error:", err)
		}
	}()
	go func() {
		for ctx.Err() == nil {
			if err := g.Consume(ctx, []string{topic}, m); err != nil && ctx.Err() == nil {
				fmt.Println("consume:", err)
				time.Sleep(100 * time.Millisecond)
			}
		}
	}()
	return g
}

func waitFor(step string, cond func() bool) {
	deadline := time.Now().Add(40 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			fail(step, fmt.Errorf("not reached within 40 s"))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func group(version sarama.KafkaVersion, topic, groupID string, total int) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a := &member{seen: map[string]bool{}}
	ga := join(ctx, version, groupID, topic, a)
	waitFor("group: first member reads everything", func() bool {
		claims, n := a.state()
		return len(claims) > 0 && len(claims[len(claims)-1]) == 2 && n == total
	})
	b := &member{seen: map[string]bool{}}
	gb := join(ctx, version, groupID, topic, b)
	waitFor("group: rebalance to two members", func() bool {
		ca, _ := a.state()
		cb, _ := b.state()
		return len(ca) >= 2 && len(cb) >= 1 && len(ca[len(ca)-1]) == 1 && len(cb[len(cb)-1]) == 1 &&
			ca[len(ca)-1][0] != cb[len(cb)-1][0]
	})
	fmt.Println("ok consumer group rebalance")

	admin, err := sarama.NewClusterAdmin(broker, config(version))
	if err != nil {
		fail("admin", err)
	}
	defer admin.Close()
	groups, err := admin.DescribeConsumerGroups([]string{groupID})
	if err != nil || len(groups) != 1 || groups[0].State != "Stable" || len(groups[0].Members) != 2 {
		fail("describe consumer groups", fmt.Errorf("%v %+v", err, groups))
	}
	var assigned []int32
	for _, m := range groups[0].Members {
		as, err := m.GetMemberAssignment()
		if err != nil {
			fail("describe consumer groups: assignment", err)
		}
		if len(as.Topics[topic]) != 1 {
			fail("describe consumer groups: assignment", fmt.Errorf("%+v", as.Topics))
		}
		assigned = append(assigned, as.Topics[topic]...)
	}
	sort.Slice(assigned, func(i, j int) bool { return assigned[i] < assigned[j] })
	if fmt.Sprint(assigned) != "[0 1]" {
		fail("describe consumer groups: assignment", fmt.Errorf("partitions %v", assigned))
	}
	fmt.Println("ok describe consumer groups")
	listed, err := admin.ListConsumerGroups()
	if err != nil || listed[groupID] != "consumer" {
		fail("list consumer groups", fmt.Errorf("%v %v", err, listed))
	}
	fmt.Println("ok list consumer groups")
	cancel()
	ga.Close()
	gb.Close()
	offsets, err := admin.ListConsumerGroupOffsets(groupID, map[string][]int32{topic: {0, 1}})
	if err != nil {
		fail("list consumer group offsets", err)
	}
	var committed int64
	for _, p := range []int32{0, 1} {
		blk := offsets.GetBlock(topic, p)
		if blk == nil || blk.Err != sarama.ErrNoError {
			fail("list consumer group offsets", fmt.Errorf("partition %d: %+v", p, blk))
		}
		committed += blk.Offset
	}
	if committed != int64(total) {
		fail("list consumer group offsets", fmt.Errorf("committed %d of %d", committed, total))
	}
	fmt.Println("ok list consumer group offsets")
}

func adminCalls(version sarama.KafkaVersion, prefix string) {
	admin, err := sarama.NewClusterAdmin(broker, config(version))
	if err != nil {
		fail("admin", err)
	}
	defer admin.Close()
	topic := prefix + "-admin"
	if err := admin.CreateTopic(topic, &sarama.TopicDetail{NumPartitions: 2, ReplicationFactor: 1}, false); err != nil {
		fail("create topic", err)
	}
	topics, err := admin.ListTopics()
	if err != nil || topics[topic].NumPartitions != 2 {
		fail("list topics", fmt.Errorf("%v %+v", err, topics[topic]))
	}
	md, err := admin.DescribeTopics([]string{topic})
	if err != nil || len(md) != 1 || len(md[0].Partitions) != 2 {
		fail("describe topics", fmt.Errorf("%v %+v", err, md))
	}
	// Sarama 1.22 sends CreatePartitions only under Version >= 1.0 (its requiredVersion):
	// below that it refuses client-side, without a request.
	if err := admin.CreatePartitions(topic, 3, nil, false); version.IsAtLeast(sarama.V1_0_0_0) && err != nil {
		fail("create partitions", err)
	} else if !version.IsAtLeast(sarama.V1_0_0_0) && err != sarama.ErrUnsupportedVersion {
		fail("create partitions", fmt.Errorf("expected sarama's client-side refusal, got %v", err))
	}
	retention := "3600000"
	if err := admin.AlterConfig(sarama.TopicResource, topic, map[string]*string{"retention.ms": &retention}, false); err != nil {
		fail("alter config", err)
	}
	entries, err := admin.DescribeConfig(sarama.ConfigResource{Type: sarama.TopicResource, Name: topic, ConfigNames: []string{"retention.ms"}})
	if err != nil || len(entries) != 1 || entries[0].Value != retention {
		fail("describe config", fmt.Errorf("%v %+v", err, entries))
	}
	// Sarama 1.22 asks with Metadata v0, which has no controller id (-1).
	brokers, _, err := admin.DescribeCluster()
	if err != nil || len(brokers) != 1 {
		fail("describe cluster", fmt.Errorf("%v %v", err, brokers))
	}
	if err := admin.DeleteTopic(topic); err != nil {
		fail("delete topic", err)
	}
	fmt.Println("ok cluster admin")
}

func main() {
	broker = []string{os.Args[1]}
	version := sarama.MaxVersion
	if os.Args[2] != "newest" {
		v, err := sarama.ParseKafkaVersion(os.Args[2])
		if err != nil {
			fail("version", err)
		}
		version = v
	}
	prefix := os.Args[3]
	fmt.Println("version", version.String())
	adminCalls(version, prefix)
	// The group's topic, made by the admin with two partitions (30 records over them).
	admin, err := sarama.NewClusterAdmin(broker, config(version))
	if err != nil {
		fail("admin", err)
	}
	topic := prefix + "-records"
	if err := admin.CreateTopic(topic, &sarama.TopicDetail{NumPartitions: 2, ReplicationFactor: 1}, false); err != nil {
		fail("create topic", err)
	}
	admin.Close()
	produce(version, topic)
	group(version, topic, prefix+"-group", 30)
	// The records, read back with a plain consumer from partition 0's oldest offset.
	c, err := sarama.NewConsumer(broker, config(version))
	if err != nil {
		fail("consumer", err)
	}
	pc, err := c.ConsumePartition(topic, 0, sarama.OffsetOldest)
	if err != nil {
		fail("consumer", err)
	}
	select {
	case m := <-pc.Messages():
		if m.Offset != 0 {
			fail("consumer", fmt.Errorf("first offset %d", m.Offset))
		}
	case e := <-pc.Errors():
		fail("consumer", e)
	case <-time.After(30 * time.Second):
		fail("consumer", fmt.Errorf("nothing read in 30 s"))
	}
	pc.Close()
	c.Close()
	fmt.Println("ok consumer")
}
