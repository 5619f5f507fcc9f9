package main

// The Nomad alloc/task directory layout and a logmon-like FIFO reader.

import (
	"errors"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

type allocPaths struct {
	StdoutFifo, StderrFifo string
	StdoutLog, StderrLog   string
	TaskDir                string
}

func pathsFor(allocDir, task string) allocPaths {
	logs := filepath.Join(allocDir, "alloc", "logs")
	return allocPaths{
		StdoutFifo: filepath.Join(logs, "."+task+".stdout.fifo"),
		StderrFifo: filepath.Join(logs, "."+task+".stderr.fifo"),
		StdoutLog:  filepath.Join(logs, task+".stdout.0"),
		StderrLog:  filepath.Join(logs, task+".stderr.0"),
		TaskDir:    filepath.Join(allocDir, task),
	}
}

// createAllocDir builds <alloc_dir>/alloc/{logs,tmp,data} and
// <alloc_dir>/<task>/{local,secrets,private,tmp} plus the two log FIFOs.
func createAllocDir(allocDir, task string) (allocPaths, error) {
	p := pathsFor(allocDir, task)
	dirs := []struct {
		path string
		mode os.FileMode
	}{
		{allocDir, 0o755},
		{filepath.Join(allocDir, "alloc"), 0o755},
		{filepath.Join(allocDir, "alloc", "logs"), 0o755},
		{filepath.Join(allocDir, "alloc", "tmp"), 0o777 | os.ModeSticky},
		{filepath.Join(allocDir, "alloc", "data"), 0o755},
		{p.TaskDir, 0o755},
		{filepath.Join(p.TaskDir, "local"), 0o755},
		{filepath.Join(p.TaskDir, "secrets"), 0o755},
		{filepath.Join(p.TaskDir, "private"), 0o755},
		{filepath.Join(p.TaskDir, "tmp"), 0o777 | os.ModeSticky},
	}
	for _, d := range dirs {
		if err := os.MkdirAll(d.path, 0o755); err != nil {
			return p, err
		}
		if err := os.Chmod(d.path, d.mode); err != nil {
			return p, err
		}
	}
	for _, fifo := range []string{p.StdoutFifo, p.StderrFifo} {
		if err := unix.Mkfifo(fifo, 0o600); err != nil && !errors.Is(err, unix.EEXIST) {
			return p, err
		}
	}
	return p, nil
}

// fifoReader copies a FIFO into a log file like Nomad's logmon: it opens
// the FIFO for reading, copies until the writer side closes (EOF), then
// reopens it, so a writer that reconnects (a restarted plugin) keeps
// working. The first open happens synchronously (non-blocking), so a
// reader exists before StartTask is sent.
type fifoReader struct {
	fifo, out string
	stopOnce  sync.Once
	stop      chan struct{}
	done      chan struct{}
}

func openFifoRead(path string) (int, error) {
	return unix.Open(path, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
}

func startFifoReader(fifo, out string) (*fifoReader, error) {
	fd, err := openFifoRead(fifo)
	if err != nil {
		return nil, err
	}
	f, err := os.OpenFile(out, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	r := &fifoReader{fifo: fifo, out: out, stop: make(chan struct{}), done: make(chan struct{})}
	go r.loop(fd, f)
	return r, nil
}

func (r *fifoReader) loop(fd int, f *os.File) {
	defer close(r.done)
	defer f.Close()
	defer func() {
		if fd >= 0 {
			unix.Close(fd)
		}
	}()
	buf := make([]byte, 64*1024)
	// drain copies whatever is buffered; returns true on EOF.
	drain := func() (eof bool) {
		for {
			n, err := unix.Read(fd, buf)
			if n > 0 {
				_, _ = f.Write(buf[:n])
				continue
			}
			if err == unix.EINTR {
				continue
			}
			if err == unix.EAGAIN {
				return false
			}
			return true // n == 0 (no writers) or a hard error
		}
	}
	for {
		select {
		case <-r.stop:
			drain()
			return
		default:
		}
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, 100)
		if err != nil {
			if err == unix.EINTR {
				continue
			}
			time.Sleep(50 * time.Millisecond)
			continue
		}
		if n == 0 {
			continue
		}
		if fds[0].Revents&(unix.POLLIN|unix.POLLHUP|unix.POLLERR) == 0 {
			continue
		}
		if drain() {
			// The writer went away: reopen like logmon does.
			unix.Close(fd)
			fd = -1
			for fd < 0 {
				nfd, err := openFifoRead(r.fifo)
				if err == nil {
					fd = nfd
					break
				}
				if !errors.Is(err, syscall.EINTR) {
					// FIFO removed: nothing more to read.
					return
				}
			}
		}
	}
}

func (r *fifoReader) Stop() {
	r.stopOnce.Do(func() { close(r.stop) })
	<-r.done
}
