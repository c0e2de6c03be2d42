// closeclean: a clean conn.Close() with RabbitMQ's Go client (amqp091-go) must look clean.
//
// Usage: closeclean AMQP_URL [CYCLES]
//
// Each cycle dials, opens a channel, registers NotifyClose and calls Close(): Close must return
// nil and NotifyClose must be closed without an error. A broker that shuts the socket right
// after connection.close-ok races the client's reader, which then reports
// `Exception (501) "EOF"`. Then, as amqp091-go's own TestConcurrentClose, 32 goroutines close one
// connection at once: none may get an *amqp.Error. Prints one summary line; exits 1 on any
// failure.
package main

import (
	"fmt"
	"os"
	"strconv"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: closeclean AMQP_URL [CYCLES]")
		os.Exit(2)
	}
	url := os.Args[1]
	cycles := 200
	if len(os.Args) > 2 {
		n, err := strconv.Atoi(os.Args[2])
		if err != nil {
			fmt.Fprintln(os.Stderr, "bad CYCLES:", err)
			os.Exit(2)
		}
		cycles = n
	}
	failures := 0
	report := func(format string, args ...interface{}) {
		failures++
		if failures <= 10 {
			fmt.Printf("FAIL "+format+"\n", args...)
		}
	}
	for i := 0; i < cycles; i++ {
		conn, err := amqp.Dial(url)
		if err != nil {
			report("cycle %d: dial: %v", i, err)
			continue
		}
		if _, err := conn.Channel(); err != nil {
			report("cycle %d: channel: %v", i, err)
		}
		notify := conn.NotifyClose(make(chan *amqp.Error, 1))
		if err := conn.Close(); err != nil {
			report("cycle %d: Close() returned %v", i, err)
		}
		select {
		case e, ok := <-notify:
			if ok && e != nil {
				report("cycle %d: NotifyClose delivered %v", i, e)
			}
		case <-time.After(5 * time.Second):
			report("cycle %d: NotifyClose neither delivered nor closed", i)
		}
	}
	rounds := cycles / 10
	for i := 0; i < rounds; i++ {
		conn, err := amqp.Dial(url)
		if err != nil {
			report("concurrent round %d: dial: %v", i, err)
			continue
		}
		var wg sync.WaitGroup
		errs := make(chan error, 32)
		for g := 0; g < 32; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := conn.Close(); err != nil && err != amqp.ErrClosed {
					if _, protocol := err.(*amqp.Error); protocol {
						errs <- err
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			report("concurrent round %d: Close() returned %v", i, err)
		}
	}
	fmt.Printf("%d cycles, %d concurrent rounds, %d failures\n", cycles, rounds, failures)
	if failures > 0 {
		os.Exit(1)
	}
}
