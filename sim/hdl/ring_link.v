// A ring link between two FPGAs for simulation: an AXI4-Stream channel that delivers each flit
// LATENCY cycles after it was sent (serdes, framing and cable), at most one flit every GAP cycles
// (the link rate), and whose output is thinned out at random (a flit may leave in a cycle with
// probability rate/256, from plusarg +link_rate=N, default 256) so that the routers meet stalls.
// Up to 64 flits are in flight.
module tandem_ring_link #(
    parameter DATA_W = 128,
    parameter USER_W = 18,
    parameter LATENCY = 40,
    parameter GAP = 2,
    parameter SEED = 1
) (
    input  wire              clk,
    input  wire              rst,
    input  wire [DATA_W-1:0] s_tdata,
    input  wire [USER_W-1:0] s_tuser,
    input  wire              s_tlast,
    input  wire              s_tvalid,
    output wire              s_tready,
    output wire [DATA_W-1:0] m_tdata,
    output wire [USER_W-1:0] m_tuser,
    output wire              m_tlast,
    output wire              m_tvalid,
    input  wire              m_tready
);
    reg [DATA_W-1:0] q_data [0:63];
    reg [USER_W-1:0] q_user [0:63];
    reg              q_last [0:63];
    reg [31:0]       q_time [0:63];
    reg [5:0] head, tail;
    reg [6:0] count;
    reg [31:0] cycle;
    reg [31:0] next_slot;  // the link is free to start a flit from this cycle on
    reg [31:0] rnd;
    localparam RATE_ARG = "link_rate=%d";
`include "random_pauses.vh"

    assign s_tready = !rst && (count < 64) && (cycle >= next_slot);
    wire push = s_tvalid && s_tready;
    assign m_tvalid = !rst && (count != 0) && (cycle >= q_time[head])
                      && ({1'b0, rnd[7:0]} < rate);
    assign m_tdata = q_data[head];
    assign m_tuser = q_user[head];
    assign m_tlast = q_last[head];
    wire pop = m_tvalid && m_tready;

    always @(posedge clk) begin
        if (rst) begin
            head <= 0; tail <= 0; count <= 0; cycle <= 0; next_slot <= 0;
            rnd <= SEED ^ seed ^ 32'h2545F491;
        end else begin
            cycle <= cycle + 1;
            rnd <= xorshift(rnd);
            if (push) begin
                q_data[tail] <= s_tdata;
                q_user[tail] <= s_tuser;
                q_last[tail] <= s_tlast;
                q_time[tail] <= cycle + LATENCY;
                tail <= tail + 1;
                next_slot <= cycle + GAP;
            end
            if (pop)
                head <= head + 1;
            count <= count + {6'd0, push} - {6'd0, pop};
        end
    end
endmodule
