// Drives a one-input, one-output stream unit (Amaranth port names) from a vector file and
// records what it emits, so a whole run needs no Python per cycle.
//
// Included once per unit with these macros defined: TANDEM_HARNESS (this module's name),
// TANDEM_DUT (the unit's module), TANDEM_VECTORS and TANDEM_RESULTS (plusarg formats naming the
// vector file read at time 0 and the file the outputs are written to when `dump` rises).
//
// The driver offers the next vector with probability valid_rate/256 in each cycle it is free
// to change (an offered vector stays valid, unchanged, until taken); the sink raises ready
// with probability ready_rate/256 each cycle. Both draw from xorshift32 generators seeded
// from `seed`. A protocol checker counts every cycle in which the unit's output drops valid
// or changes its payload while a transfer is pending, and every output beyond n_out.
module `TANDEM_HARNESS #(
    parameter IN_W = 32,
    parameter OUT_W = 32,
    parameter DEPTH = 1024,
    parameter OUT_DEPTH = 1024
) (
    input  wire        clk,
    input  wire        rst,
    input  wire [31:0] n_in,
    input  wire [31:0] n_out,
    input  wire [31:0] seed,
    input  wire [8:0]  valid_rate,
    input  wire [8:0]  ready_rate,
    input  wire        dump,
    output wire        done,
    output reg  [31:0] cycles,
    output reg  [31:0] done_at,
    output reg  [31:0] received,
    output reg  [31:0] violations
);
    reg [IN_W-1:0]  in_mem  [0:DEPTH-1];
    reg [OUT_W-1:0] out_mem [0:OUT_DEPTH-1];
    reg [8*512-1:0] vectors_path;
    reg [8*512-1:0] results_path;
    reg have_results;
    reg written;

    initial begin
        if ($value$plusargs(`TANDEM_VECTORS, vectors_path))
            $readmemh(vectors_path, in_mem);
        have_results = $value$plusargs(`TANDEM_RESULTS, results_path);
    end

`include "xorshift32.vh"

    reg  [31:0] sent;
    reg  [31:0] rand_valid, rand_ready;
    reg         in_valid;
    wire        in_ready;
    wire [IN_W-1:0] in_payload = in_mem[sent[$clog2(DEPTH)-1:0]];
    reg         out_ready;
    wire        out_valid;
    wire [OUT_W-1:0] out_payload;
    reg         pending;
    reg [OUT_W-1:0] pending_payload;

    wire taken = in_valid && in_ready;
    wire [31:0] next_sent = sent + {31'd0, taken};
    assign done = (received >= n_out) && (sent >= n_in);

    `TANDEM_DUT u_dut (
        .clk(clk), .rst(rst),
        .i__payload(in_payload), .i__valid(in_valid), .i__ready(in_ready),
        .o__payload(out_payload), .o__valid(out_valid), .o__ready(out_ready)
    );

    always @(posedge clk) begin
        if (rst) begin
            sent <= 0;
            received <= 0;
            violations <= 0;
            cycles <= 0;
            done_at <= 0;
            in_valid <= 0;
            out_ready <= 0;
            pending <= 0;
            written <= 0;
            rand_valid <= seed ^ 32'h9E3779B9;
            rand_ready <= seed ^ 32'h7F4A7C15;
        end else begin
            cycles <= cycles + 1;
            if (done && done_at == 0)
                done_at <= cycles + 1;
            rand_valid <= xorshift(rand_valid);
            rand_ready <= xorshift(rand_ready);
            sent <= next_sent;
            if (!in_valid || in_ready)
                in_valid <= (next_sent < n_in) && ({1'b0, rand_valid[7:0]} < valid_rate);
            out_ready <= {1'b0, rand_ready[7:0]} < ready_rate;
            if (out_valid && out_ready) begin
                if (received < OUT_DEPTH)
                    out_mem[received[$clog2(OUT_DEPTH)-1:0]] <= out_payload;
                if (received >= n_out)
                    violations <= violations + 1;
                received <= received + 1;
            end
            if (pending && (!out_valid || out_payload != pending_payload))
                violations <= violations + 1;
            pending <= out_valid && !out_ready;
            pending_payload <= out_payload;
            if (dump && !written && have_results) begin
                $writememh(results_path, out_mem);
                written <= 1;
            end
        end
    end
endmodule
